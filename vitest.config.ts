import { defineConfig } from 'vitest/config';
import SkipSummaryReporter from './scripts/skip-summary-reporter.js';

// One root config: every package is a project (sources resolve through the '@lora/source'
// export condition, so tests never need a build first), plus the repository's own scripts.
export default defineConfig({
  test: {
    reporters: ['default', new SkipSummaryReporter()],
    projects: [
      'packages/*/vitest.config.ts',
      {
        // the repository's scripts; the README snippets import the packages from source, as package tests do
        resolve: { conditions: ['@lora/source'] },
        ssr: { resolve: { conditions: ['@lora/source'] } },
        test: {
          name: 'repo',
          include: ['scripts/**/*.test.ts'],
          pool: 'forks',
          server: { deps: { inline: [/@tensorflow\/tfjs-core/] } },
        },
      },
    ],
  },
});
