import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const script = join(import.meta.dirname, 'check-layers.mjs');

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'layers-'));
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}
const run = (root: string) => spawnSync(process.execPath, [script, root], { encoding: 'utf8' });

it('passes a package that uses only lower layers', () => {
  const root = tree({
    'packages/tensor/package.json': '{"name":"@lora/tensor"}',
    'packages/linalg/package.json': '{"name":"@lora/linalg","dependencies":{"@lora/tensor":"*"}}',
    'packages/linalg/src/svd.ts':
      "import { initBackend } from '@lora/tensor';\nimport type { X } from '@lora/tensor/node';",
  });
  expect(run(root).status).toBe(0);
});

it('fails an upward import, a sideways dependency and an unknown package, naming each', () => {
  const root = tree({
    'packages/tensor/package.json': '{"name":"@lora/tensor"}',
    'packages/tensor/src/a.ts': "export { x } from '@lora/core';",
    'packages/nn/package.json': '{"name":"@lora/nn","devDependencies":{"@lora/linalg":"*"}}',
    'packages/extra/package.json': '{"name":"@lora/extra"}',
  });
  const r = run(root);
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(
    /packages\/tensor\/src\/a.ts: @lora\/tensor \(layer 0\) must not use @lora\/core \(layer 2\)/,
  );
  expect(r.stderr).toMatch(
    /packages\/nn\/package.json devDependencies: @lora\/nn \(layer 1\) must not use @lora\/linalg \(layer 1\)/,
  );
  expect(r.stderr).toMatch(/package '@lora\/extra' is not in the layer table/);
});
