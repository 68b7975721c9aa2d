import { defineConfig } from 'vitest/config';

// One root config: every package is a project (sources resolve through the '@lora/source'
// export condition, so tests never need a build first), plus the repository's own scripts.
export default defineConfig({
  test: {
    projects: ['packages/*/vitest.config.ts', { test: { name: 'repo', include: ['scripts/**/*.test.ts'] } }],
  },
});
