import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { gatheredLowRank } from './gathered-low-rank';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';

/** y[t] = Σ_j w[t,j]·B[e]·(A[e]·x[t]) in float64, from the inputs' values. */
async function reference(x: tf.Tensor, a: tf.Tensor, b: tf.Tensor, idx: number[][], w: tf.Tensor): Promise<number[]> {
  const [tokens, inF] = x.shape as [number, number];
  const [, r] = a.shape as [number, number, number];
  const outF = b.shape[1] as number;
  const [xv, av, bv, wv] = (await Promise.all([x.data(), a.data(), b.data(), w.data()])) as Float32Array[];
  const k = (idx[0] as number[]).length;
  const out = new Array<number>(tokens * outF).fill(0);
  for (let t = 0; t < tokens; t++)
    for (let j = 0; j < k; j++) {
      const e = (idx[t] as number[])[j] as number;
      const z = Array.from({ length: r }, (_, i) => {
        let s = 0;
        for (let f = 0; f < inF; f++)
          s += (xv as Float32Array)[t * inF + f]! * (av as Float32Array)[(e * r + i) * inF + f]!;
        return s;
      });
      for (let o = 0; o < outF; o++) {
        let y = 0;
        for (let i = 0; i < r; i++) y += (bv as Float32Array)[(e * outF + o) * r + i]! * (z[i] as number);
        out[t * outF + o]! += (wv as Float32Array)[t * k + j]! * y;
      }
    }
  return out;
}

await describeEachBackend('gatheredLowRank', (backend) => {
  failOnGpuErrors();
  // [tokens, in, out, experts, r, k]: a rank below one shrink chunk, one of several chunks (20 = 16 + 4)
  for (const [tokens, inF, outF, experts, r, k] of [
    [7, 12, 9, 5, 4, 2],
    [5, 70, 33, 6, 20, 3],
  ] as const) {
    it(`routes each row through its own k of ${experts} experts (T ${tokens}, ${inF} → ${outF}, r ${r}, k ${k})`, async () => {
      const x = seq([tokens, inF], 3) as tf.Tensor2D;
      const a = seq([experts, r, inF], 5) as tf.Tensor3D;
      const b = seq([experts, outF, r], 7) as tf.Tensor3D;
      const idx = Array.from({ length: tokens }, (_, t) =>
        Array.from({ length: k }, (_, j) => (t * 3 + j * 2) % experts),
      );
      const indices = tf.tensor2d(idx, [tokens, k], 'int32');
      const w = seq([tokens, k], 11) as tf.Tensor2D;
      const y = assertNoLeaks(() => gatheredLowRank(x, a, b, indices, w));
      expect(y.shape).toEqual([tokens, outF]);
      await expectClose(y, await reference(x, a, b, idx, w), 1e-5);
      const c = composite(() => gatheredLowRank(x, a, b, indices, w));
      await expectClose(y, c, 1e-5);
      await expectFusedOnWebgpu(backend.name, () => gatheredLowRank(x, a, b, indices, w), 'LoraGatheredExpand');
      tf.dispose([x, a, b, indices, w, y, c]);
    });
  }

  it("has the composite's gradients inside a tape (the fused kernels have none)", async () => {
    const x = seq([4, 6], 13) as tf.Tensor2D;
    const a = seq([3, 2, 6], 17) as tf.Tensor3D;
    const b = seq([3, 5, 2], 19) as tf.Tensor3D;
    const indices = tf.tensor2d(
      [
        [0, 2],
        [1, 0],
        [2, 1],
        [0, 1],
      ],
      [4, 2],
      'int32',
    );
    const w = seq([4, 2], 23) as tf.Tensor2D;
    const f = (xx: tf.Tensor, aa: tf.Tensor, bb: tf.Tensor) =>
      tf.sum(gatheredLowRank(xx as tf.Tensor2D, aa as tf.Tensor3D, bb as tf.Tensor3D, indices, w));
    // the factors' gradients go through gather's, which needs UnsortedSegmentSum (wasm has none)
    const inputs = tf.getKernel('UnsortedSegmentSum', backend.name) ? [x, a, b] : [x];
    const g = assertNoLeaks(() => tf.grads((...t: tf.Tensor[]) => f(t[0] as tf.Tensor, t[1] ?? a, t[2] ?? b))(inputs));
    const ref = composite(() => tf.grads((...t: tf.Tensor[]) => f(t[0] as tf.Tensor, t[1] ?? a, t[2] ?? b))(inputs));
    for (let i = 0; i < inputs.length; i++) await expectClose(g[i] as tf.Tensor, ref[i] as tf.Tensor, 1e-6);
    tf.dispose([x, a, b, indices, w, ...g, ...ref]);
  });
});

describe('gatheredLowRank input checks', () => {
  it('names the shapes that do not agree', () => {
    const x = tf.zeros([2, 4]) as tf.Tensor2D;
    const a = tf.zeros([3, 2, 5]) as tf.Tensor3D;
    const b = tf.zeros([3, 6, 2]) as tf.Tensor3D;
    const idx = tf.zeros([2, 1], 'int32') as tf.Tensor2D;
    const w = tf.zeros([2, 1]) as tf.Tensor2D;
    expect(() => gatheredLowRank(x, a, b, idx, w)).toThrow(/x \[2, 4\], a \[3, 2, 5\]/);
    const idxF = tf.zeros([2, 1]) as tf.Tensor2D;
    const a4 = tf.zeros([3, 2, 4]) as tf.Tensor3D;
    expect(() => gatheredLowRank(x, a4, b, idxF, w)).toThrow(/indices float32/);
    tf.dispose([x, a, b, idx, w, idxF, a4]);
  });
});
