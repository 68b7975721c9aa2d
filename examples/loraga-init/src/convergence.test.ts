import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { runOne, smooth, stepsToReach } from './convergence';

beforeAll(async () => {
  await initBackend('cpu');
});

it('the experiment runs both methods on a tiny Llama; LoRA-GA starts from the same held-out loss and moves it more in two steps', async () => {
  const doc = (i: number) => Array.from({ length: 6 + (i % 3) }, (_, j) => 3 + ((i * 7 + j * 5) % 90));
  const o = {
    modelDir: join(import.meta.dirname, '..', '__fixtures__', 'tiny-llama'),
    train: Array.from({ length: 12 }, (_, i) => doc(i)),
    heldout: Array.from({ length: 4 }, (_, i) => doc(100 + i)),
    steps: 2,
    batchSize: 4,
    lr: 1e-2,
    r: 4,
    loraAlpha: 8,
    targetModules: ['q_proj', 'v_proj', 'down_proj'],
    gradientBatches: 2,
    seeds: [0],
    evalEvery: 1,
  };
  const before = tf.memory().numTensors;
  const lora = await runOne(o, 'lora', 0);
  const ga = await runOne(o, 'lora_ga', 0);
  expect(tf.memory().numTensors).toBe(before);
  for (const r of [lora, ga]) {
    expect(r.losses).toHaveLength(2);
    expect(r.heldout.map(([s]) => s)).toEqual([0, 1, 2]);
  }
  // LoRA-GA leaves the model unchanged at init (W − s·B·A + s·B·A), so both start from the same loss
  expect(Math.abs((ga.heldout[0] as [number, number])[1] - (lora.heldout[0] as [number, number])[1])).toBeLessThan(
    1e-5,
  );
  // default LoRA's first step moves nothing held-out much (B = 0: only B learns at first)
  const moved = (r: typeof lora) => (r.heldout[0] as [number, number])[1] - (r.heldout.at(-1) as [number, number])[1];
  expect(moved(ga)).toBeGreaterThan(moved(lora));
  expect(
    stepsToReach(
      [
        [0, 3],
        [5, 2],
        [10, 1],
      ],
      2,
    ),
  ).toBe(5);
  expect(stepsToReach([[0, 3]], 2)).toBeNull();
  expect(smooth([1, 3, 5], 2)).toEqual([1, 2, 4]);
});
