// @ts-check
import { defineProject } from 'vitest/config';

/**
 * The vitest project every package uses. Tests import workspace packages by their
 * published names; the '@lora/source' condition points those names at `src/`.
 * @param {string} name
 */
export function loraProject(name) {
  return defineProject({
    resolve: { conditions: ['@lora/source'] },
    ssr: { resolve: { conditions: ['@lora/source'] } },
    test: {
      name,
      include: ['src/**/*.test.ts'],
      // Dawn's native addon and the wasm backend are happier in processes than in worker threads.
      pool: 'forks',
      testTimeout: 60_000,
      hookTimeout: 120_000,
      // tfjs-core's ESM uses extensionless imports; vite inlines it so that gradient registration loads.
      server: { deps: { inline: [/@tensorflow\/tfjs-core/] } },
    },
  });
}
