// @ts-check
import { defineProject } from 'vitest/config';
import SkipSummaryReporter from './scripts/skip-summary-reporter.js';

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
      // the default output, then which suites were skipped and why (a package's `vitest run` uses this config as its root)
      // @ts-expect-error reporters are a root option; vitest reads them when the package runs on its own
      reporters: ['default', new SkipSummaryReporter()],
      include: ['src/**/*.test.ts'],
      // Dawn's native addon and the wasm backend are happier in processes than in worker threads.
      pool: 'forks',
      // a guard against hangs, not a timing: under the full CI's load (2 cores, load 13–16) tests that take
      // 10 s alone have taken over 60 s (Arrow's first webgpu tests, 2026-12-04)
      testTimeout: 180_000,
      hookTimeout: 120_000,
      // tfjs-core's ESM uses extensionless imports; vite inlines it so that gradient registration loads.
      server: { deps: { inline: [/@tensorflow\/tfjs-core/] } },
    },
  });
}
