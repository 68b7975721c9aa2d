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

it("reads bench/, browser/ and scripts/ too, and enforces the design's nevers with their reasons", () => {
  const root = tree({
    'packages/tensor/package.json': '{"name":"@lora/tensor"}',
    'packages/nn/package.json': '{"name":"@lora/nn"}',
    'packages/nn/bench/run.ts': "import { x } from '@lora/core';",
    'packages/nn/browser/smoke.ts': "import('@lora/cli');",
    'packages/nn/scripts/check.ts': "export * from '@lora/models';",
    'packages/models/package.json': '{"name":"@lora/models"}',
    'packages/models/src/llama.ts': "import { getPeftModel } from '@lora/core';",
    'packages/eva/package.json': '{"name":"@lora/eva","devDependencies":{"@lora/models":"*"}}',
    'packages/eva/src/eva.test.ts': "import { LlamaForCausalLM } from '@lora/models';",
  });
  const r = run(root);
  expect(r.status).toBe(1);
  expect(r.stderr).toMatch(/packages\/nn\/bench\/run.ts: @lora\/nn \(layer 1\) must not use @lora\/core \(layer 2\)/);
  expect(r.stderr).toMatch(/packages\/nn\/browser\/smoke.ts: @lora\/nn \(layer 1\) must not use @lora\/cli/);
  expect(r.stderr).toMatch(/packages\/nn\/scripts\/check.ts: @lora\/nn \(layer 1\) must not use @lora\/models/);
  expect(r.stderr).toMatch(
    /packages\/models\/src\/llama.ts: @lora\/models must not use @lora\/core; @lora\/models never imports @lora\/core: a model knows nothing of LoRA/,
  );
  expect(r.stderr).toMatch(
    /packages\/eva\/package.json devDependencies: @lora\/eva must not use @lora\/models; a method package never imports @lora\/models/,
  );
  expect(r.stderr).toMatch(/packages\/eva\/src\/eva.test.ts: @lora\/eva must not use @lora\/models/);
});
