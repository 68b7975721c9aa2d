import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { topkSoftmax } from './topk-softmax';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';

/** The k largest (|v| when absolute) of each row, largest first, lower index first on ties; and their softmax / t. */
function reference(rows: number[][], k: number, t: number, absolute: boolean) {
  return rows.map((row) => {
    const v = row.map((x) => (absolute ? Math.abs(x) : x));
    const idx = [...v.keys()].sort((a, b) => (v[b] as number) - (v[a] as number) || a - b).slice(0, k);
    const top = idx.map((i) => v[i] as number);
    const ex = top.map((x) => Math.exp((x - (top[0] as number)) / t));
    const z = ex.reduce((a, b) => a + b, 0);
    return { idx, coeff: ex.map((e) => e / z) };
  });
}

await describeEachBackend('topkSoftmax', (backend) => {
  failOnGpuErrors();
  for (const [rows, experts, k, absolute, temperature] of [
    [9, 6, 2, true, 0.7],
    [70, 64, 3, false, 1],
    [5, 16, 16, true, 2],
  ] as const)
    it(`the top ${k} of ${experts} per row${absolute ? ' by |score|' : ''} and their softmax at ${temperature}`, async () => {
      const raw = seq([rows, experts], 41 + k);
      // ties, across signs: with |·| an entry and its negation are equal
      const scores = tf.tidy(() =>
        tf.concat([tf.slice(raw, [0, 0], [rows, experts - 2]), tf.neg(tf.slice(raw, [0, 0], [rows, 2]))], 1),
      ) as tf.Tensor2D;
      const got = assertNoLeaks(() => topkSoftmax(scores, k, { temperature, absolute }));
      const want = reference((await scores.array()) as number[][], k, temperature, absolute);
      expect(await got.indices.array()).toEqual(want.map((w) => w.idx));
      await expectClose(
        got.coefficients,
        want.flatMap((w) => w.coeff),
        1e-6,
      );
      const c = composite(() => topkSoftmax(scores, k, { temperature, absolute }));
      await expectClose(got.coefficients, c.coefficients, 1e-6);
      await expectFusedOnWebgpu(
        backend.name,
        () => tf.dispose(Object.values(topkSoftmax(scores, k, { absolute }))),
        'LoraTopKSoftmax',
      );
      tf.dispose([raw, scores, got.indices, got.coefficients, c.indices, c.coefficients]);
    });
});

describe('topkSoftmax input checks', () => {
  it('names k and the shape', () => {
    const s = tf.zeros([2, 3]) as tf.Tensor2D;
    expect(() => topkSoftmax(s, 4)).toThrow(/k an integer in \[1, E\]; got scores \[2, 3\], k 4/);
    expect(() => topkSoftmax(s, 1, { temperature: 0 })).toThrow(/temperature must be positive, got 0/);
    s.dispose();
  });
});
