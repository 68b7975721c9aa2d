import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';
import { maskedSoftmax } from './masked-softmax';

const MIN = -3.4028234663852886e38;

/**
 * A causal mask [mb, 1, r, s] with the float32 minimum above the diagonal, and key `pad` padded in
 * batch 1 (pad 0 masks batch 1's first query row entirely: softmax is then uniform, as on cpu and in torch).
 */
function mask(mb: number, r: number, s: number, pad: number): tf.Tensor {
  const v = new Float32Array(mb * r * s);
  for (let b = 0; b < mb; b++)
    for (let i = 0; i < r; i++)
      for (let j = 0; j < s; j++) if (j > i % s || (b === 1 && j === pad)) v[(b * r + i) * s + j] = MIN;
  return tf.tensor4d(v, [mb, 1, r, s]);
}

await describeEachBackend('maskedSoftmax', (backend) => {
  failOnGpuErrors();
  // s = 300: more than one workgroup's worth of threads per row
  for (const [b, g, r, s, mb] of [
    [2, 3, 4, 300, 2],
    [2, 2, 6, 3, 1],
  ] as const) {
    it(`matches float64 and the composite's gradient for scores [${b}, ${g}, ${r}, ${s}], mask batch ${mb}`, async () => {
      const scores = tf.mul(seq([b, g, r, s], 37), 6);
      const m = mask(mb, r, s, 0);
      const scale = 1 / Math.sqrt(8);
      const p = assertNoLeaks(() => maskedSoftmax(scores, m, scale));
      const sv = (await scores.data()) as Float32Array;
      const mv = (await m.data()) as Float32Array;
      const want = new Float64Array(sv.length);
      for (let row = 0; row < b * g * r; row++) {
        const bb = Math.floor(row / (g * r));
        const mrow = (mb > 1 ? bb : 0) * r + (row % r);
        const z = Array.from(
          { length: s },
          (_, j) => (sv[row * s + j] as number) * scale + (mv[mrow * s + j] as number),
        );
        const top = Math.max(...z);
        const e = z.map((v) => Math.exp(v - top));
        const sum = e.reduce((x, y) => x + y, 0);
        for (let j = 0; j < s; j++) want[row * s + j] = (e[j] as number) / sum;
      }
      await expectClose(p, want, 1e-6);
      // tfjs's own webgpu softmax gives NaN on a fully masked row: its gradient is compared without one
      const m1 = mask(mb, r, s, 1);
      const dy = seq([b, g, r, s], 41);
      const f = (x: tf.Tensor) => tf.sum(tf.mul(maskedSoftmax(x, m1, scale), dy));
      const grad = assertNoLeaks(() => tf.grad(f)(scores));
      const ref = composite(() => tf.grad(f)(scores));
      await expectClose(grad, ref, 1e-5);
      await expectFusedOnWebgpu(backend.name, () => tf.grad(f)(scores), 'LoraScaledMaskedSoftmaxGrad');
      tf.dispose([scores, m, m1, p, dy, grad, ref]);
    });
  }

  it("gives the mask the composite's gradient", async () => {
    const scores = seq([2, 2, 3, 4], 43);
    const m = tf.mul(seq([1, 1, 3, 4], 47), 2);
    const dy = seq([2, 2, 3, 4], 53);
    const f = (x: tf.Tensor) => tf.sum(tf.mul(maskedSoftmax(scores, x, 0.5), dy));
    const grad = tf.grad(f)(m);
    const ref = composite(() => tf.grad(f)(m));
    await expectClose(grad, ref, 1e-5);
    tf.dispose([scores, m, dy, grad, ref]);
  });
});

describe('maskedSoftmax input checks', () => {
  it('names the shapes', () => {
    const s = tf.zeros([1, 2, 3, 4]);
    const m = tf.zeros([1, 1, 3, 5]);
    expect(() => maskedSoftmax(s, m, 1)).toThrow(/scores \[1, 2, 3, 4\] and mask \[1, 1, 3, 5\]/);
    tf.dispose([s, m]);
  });
});
