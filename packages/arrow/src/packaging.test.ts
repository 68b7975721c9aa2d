import { join } from 'node:path';
import { expect, it } from 'vitest';

it("a bundler keeps the registration of a bare import '@lora/arrow' (its sideEffects), and the bundle needs no Node module", async () => {
  const { build } = await import('esbuild');
  const out = await build({
    stdin: { contents: "import '@lora/arrow';", resolveDir: join(import.meta.dirname, '..'), loader: 'js' },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    conditions: ['@lora/source'],
    external: [
      '@tensorflow/*',
      '@lora/core',
      '@lora/nn',
      '@lora/linalg',
      '@lora/kernels',
      '@lora/tensor',
      '@lora/tensor/*',
    ],
    logLevel: 'silent',
  });
  const text = out.outputFiles[0]?.text ?? '';
  expect(text).toMatch(/registerLoraVariant\(arrowVariant\)/);
  expect(text).not.toMatch(/from ["']node:/);
});

it('bundles for the browser with every @lora package it uses, none of them pulling a Node module in', async () => {
  const { build } = await import('esbuild');
  const out = await build({
    stdin: {
      contents: "export { createArrowModel } from '@lora/arrow';",
      resolveDir: join(import.meta.dirname, '..'),
      loader: 'js',
    },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    conditions: ['@lora/source'],
    external: ['@tensorflow/*', '@huggingface/*'],
    logLevel: 'silent',
  });
  const text = out.outputFiles[0]?.text ?? '';
  expect(text).toMatch(/createArrowModel/);
  expect(text).not.toMatch(/from ["']node:/);
  expect(text).not.toMatch(/require\(["']node:/);
});
