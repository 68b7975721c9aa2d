import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';

/** Bundles `contents` as a user's code would be, from `@lora/loftq`'s sources or its built files. */
async function bundle(contents: string, conditions: string[]) {
  const { build } = await import('esbuild');
  const out = await build({
    stdin: { contents, resolveDir: import.meta.dirname, loader: 'js' },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'neutral',
    conditions,
    external: ['@tensorflow/*', '@lora/core', '@lora/nn', '@lora/linalg', '@lora/tensor'],
    logLevel: 'silent',
  });
  return out.outputFiles[0]?.text ?? '';
}

it("a bare import '@lora/loftq' keeps its registrations through a bundler (package.json sideEffects)", async () => {
  const fromSource = await bundle("import '@lora/loftq';", ['@lora/source']);
  expect(fromSource).toMatch(/registerLoraInit\(["']loftq["']/);
  expect(fromSource).toMatch(/registerLoraDispatcher\(["']quantized-linear["']/);
  // the built package (tsup puts shared code, the registrations too, in chunks), when it has been built
  if (existsSync(join(import.meta.dirname, '..', 'dist', 'index.js'))) {
    const built = await bundle("import '@lora/loftq';", []);
    expect(built).toMatch(/registerLoraInit\(["']loftq["']/);
    expect(built).toMatch(/registerLoraDispatcher\(["']quantized-linear["']/);
  }
});
