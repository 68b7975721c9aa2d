// @ts-check
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import { beforeAll, expect, it } from 'vitest';
import { loadTask, logitsErrors, loftqErrors, memoryByBits, runOne } from './experiment.js';

/** @type {Awaited<ReturnType<typeof loadTask>>} */
let task;
beforeAll(async () => {
  await initBackend('wasm');
  task = await loadTask();
  task.train = task.train.slice(0, 16);
  task.heldout = task.heldout.slice(0, 8);
});

it('LoftQ over an NF4 base starts nearer the float32 model than QLoRA (logits MSE, PEFT’s test: by 3% at least)', async () => {
  const before = tf.memory().numTensors;
  const [qlora, loftq] = await logitsErrors(
    task,
    [
      { name: 'QLoRA', bits: 4, init: 'lora' },
      { name: 'LoftQ', bits: 4, init: 'loftq' },
    ],
    { loftqIter: 1, docs: 8, targets: ['q_proj', 'v_proj'] },
  );
  expect(/** @type {number} */ (loftq?.mse)).toBeLessThan(/** @type {number} */ (qlora?.mse) / 1.03);
  expect(tf.memory().numTensors).toBe(before);
}, 120_000);

it('trains LoRA over a 2-bit base for two steps; the base holds less than a fifth of float32', async () => {
  const r = await runOne(
    task,
    { name: 'QLoRA, 2-bit', bits: 2, init: 'lora' },
    { steps: 2, batchSize: 8, targets: ['q_proj', 'v_proj'] },
  );
  expect(r.losses).toHaveLength(2);
  expect(Number.isFinite(r.pplEnd)).toBe(true);
  const rows = await memoryByBits(task.dir, ['q_proj']);
  expect(rows.map((x) => x.bits)).toEqual([32, 8, 4, 2]);
  for (let i = 1; i < 4; i++)
    expect(rows[i]?.linearBytes).toBeLessThan(/** @type {number} */ (rows[i - 1]?.linearBytes));
  for (const x of rows) expect(x.backendBytes).toBe(x.modelBytes);
  expect(/** @type {number} */ (rows[3]?.linearBytes)).toBeLessThan(/** @type {number} */ (rows[0]?.linearBytes) / 5);
  const e = await loftqErrors(task.dir, { steps: 2, bits: [4], layers: 2 });
  expect(e.out[0]?.errors[1]).toBeLessThan(/** @type {number} */ (e.out[0]?.errors[0]));
}, 120_000);
