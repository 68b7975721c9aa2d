import { defineConfig } from 'vitest/config';
import SkipSummaryReporter from './scripts/skip-summary-reporter.js';

// One root config: every package is a project (sources resolve through the '@lora/source'
// export condition, so tests never need a build first), plus the repository's own scripts.
export default defineConfig({
  test: {
    reporters: ['default', new SkipSummaryReporter()],
    projects: ['packages/*/vitest.config.ts', { test: { name: 'repo', include: ['scripts/**/*.test.ts'] } }],
  },
});
