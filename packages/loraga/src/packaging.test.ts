import { join } from 'node:path';
import { expect, it } from 'vitest';

it("a bundler keeps the registration of a bare import '@lora/loraga' (its sideEffects), and the bundle needs no Node module", async () => {
  const { build } = await import('esbuild');
  const out = await build({
    stdin: { contents: "import '@lora/loraga';", resolveDir: join(import.meta.dirname, '..'), loader: 'js' },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    conditions: ['@lora/source'],
    external: ['@tensorflow/*', '@lora/core', '@lora/nn', '@lora/linalg', '@lora/tensor', '@lora/tensor/*'],
    logLevel: 'silent',
  });
  const text = out.outputFiles[0]?.text ?? '';
  expect(text).toMatch(/registerLoraInit\(["']lora_ga["'], loraGaInit\)/);
  // the cache's file access is imported on use only (a Node feature), so the package bundles for browsers
  expect(text).not.toMatch(/from ["']node:/);
});
