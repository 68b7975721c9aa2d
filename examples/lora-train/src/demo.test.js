// @ts-check
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { runDemo } from './demo.js';

const reference = JSON.parse(
  await readFile(new URL('../../fortune-llama/__fixtures__/reference.json', import.meta.url), 'utf8'),
);
let out = '';
beforeAll(async () => {
  await initBackend('wasm');
  out = await mkdtemp(join(tmpdir(), 'lora-demo-'));
});
afterAll(() => rm(out, { recursive: true, force: true }));

it('runs the demo end to end in a few steps: perplexity as transformers measures it, reload and merge exact', async () => {
  const before = tf.memory().numTensors;
  /** @type {string[]} */
  const lines = [];
  const r = await runDemo({
    steps: 3,
    prompts: ['You will'],
    maxNewTokens: 6,
    out: join(out, 'adapter'),
    progressBar: false,
    log: (l) => lines.push(l),
  });
  // the base's held-out perplexity is the one transformers computed with the same weights
  expect(Math.abs(Math.log(r.pplBefore) - reference.lora_heldout_loss) / reference.lora_heldout_loss).toBeLessThan(
    1e-5,
  );
  expect(r.steps).toBe(3);
  expect(r.pplAfter).toBeLessThan(r.pplBefore);
  expect(r.reloadError).toBe(0);
  expect(r.mergeError).toBeLessThan(1e-4);
  expect(r.sameGreedy).toBe(true);
  expect(r.files.sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  const config = JSON.parse(await readFile(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
  expect(config).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, task_type: 'CAUSAL_LM' });
  expect([...config.target_modules].sort()).toEqual([
    'down_proj',
    'gate_proj',
    'k_proj',
    'o_proj',
    'q_proj',
    'up_proj',
    'v_proj',
  ]);
  expect(lines.join('\n')).toMatch(/held-out perplexity: [\d.]+ -> [\d.]+/);
  expect(tf.memory().numTensors).toBe(before);
});
