import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';
import { rmsNorm } from './rms-norm';

/** float64 reference: x / √(mean(x²) + eps) · w per row. */
function reference(x: Float32Array, w: Float32Array, eps: number): Float64Array {
  const d = w.length;
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / d; r++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += (x[r * d + i] as number) ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) out[r * d + i] = (x[r * d + i] as number) * inv * (w[i] as number);
  }
  return out;
}

await describeEachBackend('rmsNorm', (backend) => {
  failOnGpuErrors();
  // 300 columns: more than one workgroup's worth of threads, not a multiple of it
  for (const shape of [
    [2, 3, 300],
    [5, 16],
  ]) {
    it(`matches float64 and the composite's gradients for [${shape}]`, async () => {
      const x = seq(shape, 3);
      const w = tf.add(seq([shape.at(-1) as number], 5), 1.5);
      const dy = seq(shape, 7);
      const y = assertNoLeaks(() => rmsNorm(x, w, 1e-5));
      await expectClose(y, reference((await x.data()) as Float32Array, (await w.data()) as Float32Array, 1e-5), 1e-6);
      const g = assertNoLeaks(() => tf.grads((a, b) => tf.sum(tf.mul(rmsNorm(a, b, 1e-5), dy)))([x, w]));
      const ref = composite(() => tf.grads((a, b) => tf.sum(tf.mul(rmsNorm(a, b, 1e-5), dy)))([x, w]));
      await expectFusedOnWebgpu(
        backend.name,
        () => tf.grad((a) => tf.sum(tf.mul(rmsNorm(a, w, 1e-5), dy)))(x),
        'LoraRMSNormGradInput',
      );
      await expectClose(g[0] as tf.Tensor, ref[0] as tf.Tensor, 1e-5);
      await expectClose(g[1] as tf.Tensor, ref[1] as tf.Tensor, 1e-5);
      tf.dispose([x, w, dy, y, ...g, ...ref]);
    });
  }
  it('runs one fused dispatch forward on webgpu', async () => {
    const x = seq([4, 8]);
    const w = tf.ones([8]);
    await expectFusedOnWebgpu(backend.name, () => rmsNorm(x, w, 1e-6), 'LoraRMSNorm');
    tf.dispose([x, w]);
  });
});

describe('rmsNorm input checks', () => {
  it('names the shapes when the weight does not fit', () => {
    const x = tf.zeros([2, 4]);
    const w = tf.ones([3]);
    expect(() => rmsNorm(x, w, 1e-6)).toThrow(/weight \[3\] must be 1-d and match the last axis of x \[2, 4\]/);
    tf.dispose([x, w]);
  });
});
