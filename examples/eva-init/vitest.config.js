// The example's quick test (npm test): the workspace packages from source, as the package tests use them.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: { conditions: ['@lora/source'] },
  ssr: { resolve: { conditions: ['@lora/source'] } },
  test: {
    include: ['src/**/*.test.js'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    server: { deps: { inline: [/@tensorflow\/tfjs-core/] } },
  },
});
