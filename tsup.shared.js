// @ts-check
import { defineConfig } from 'tsup';

/**
 * The build every package uses: ESM with declarations and source maps, for Node 20 and bundlers.
 * @param {string[]} entry
 * @param {Partial<import('tsup').Options>} [extra]
 */
export function loraBuild(entry = ['src/index.ts'], extra = {}) {
  return defineConfig({ entry, format: ['esm'], dts: true, sourcemap: true, clean: true, target: 'node20', ...extra });
}
