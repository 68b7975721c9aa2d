import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';
import { ropeHeads } from './rope';

/** float64: split [B,T,H·D] into [B,H,T,D], then x·cos + [−x₂, x₁]·sin. */
function reference(y: Float32Array, cos: Float32Array, sin: Float32Array, b: number, t: number, h: number, d: number) {
  const out = new Float64Array(y.length);
  const half = d / 2;
  for (let bb = 0; bb < b; bb++)
    for (let hh = 0; hh < h; hh++)
      for (let tt = 0; tt < t; tt++)
        for (let dd = 0; dd < d; dd++) {
          const src = ((bb * t + tt) * h + hh) * d;
          const rot = dd < half ? -(y[src + dd + half] as number) : (y[src + dd - half] as number);
          out[((bb * h + hh) * t + tt) * d + dd] =
            (y[src + dd] as number) * (cos[tt * d + dd] as number) + rot * (sin[tt * d + dd] as number);
        }
  return out;
}

await describeEachBackend('ropeHeads', (backend) => {
  failOnGpuErrors();
  it('splits heads and rotates as float64, with the composite gradient', async () => {
    const [b, t, h, d] = [2, 5, 3, 8];
    const y = seq([b, t, h * d], 19);
    const angles = tf.mul(seq([t, d], 23), 3);
    const cos = tf.cos(angles);
    const sin = tf.sin(angles);
    const out = assertNoLeaks(() => ropeHeads(y, cos, sin, h));
    expect(out.shape).toEqual([b, h, t, d]);
    const [yv, cv, sv] = (await Promise.all([y.data(), cos.data(), sin.data()])) as Float32Array[];
    await expectClose(out, reference(yv as Float32Array, cv as Float32Array, sv as Float32Array, b, t, h, d), 1e-6);
    const dy = seq([b, h, t, d], 29);
    const f = (x: tf.Tensor) => tf.sum(tf.mul(ropeHeads(x, cos, sin, h), dy));
    const g = assertNoLeaks(() => tf.grad(f)(y));
    const ref = composite(() => tf.grad(f)(y));
    await expectClose(g, ref, 1e-5);
    await expectFusedOnWebgpu(backend.name, () => tf.grad(f)(y), 'LoraRopeHeadsGrad');
    tf.dispose([y, angles, cos, sin, out, dy, g, ref]);
  });

  it('only splits the heads without tables', async () => {
    const y = seq([1, 2, 4], 31);
    const out = ropeHeads(y, null, null, 2);
    const ref = tf.transpose(tf.reshape(y, [1, 2, 2, 2]), [0, 2, 1, 3]);
    await expectClose(out, ref, 1e-12);
    tf.dispose([y, out, ref]);
  });
});

describe('ropeHeads input checks', () => {
  it('names the shapes that do not fit', () => {
    const y = tf.zeros([1, 3, 8]);
    const c = tf.zeros([3, 2]);
    expect(() => ropeHeads(y, c, c, 2)).toThrow(/cos \[3, 2\] and sin \[3, 2\] must be \[3, 4\]/);
    expect(() => ropeHeads(y, c, c, 3)).toThrow(/with 3 heads, got \[1, 3, 8\]/);
    tf.dispose([y, c]);
  });
});
