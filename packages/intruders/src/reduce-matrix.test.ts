import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Matrix64, matmul64 } from '@lora/linalg';
import { assertNoLeaks, initBackend } from '@lora/tensor';
import { reduceMatrix } from './reduce-matrix';
import { randomMatrix, referenceReduction } from './reference.test-util';
import { WeightSvdCache } from './weight-svd-cache';

beforeAll(async () => {
  await initBackend('cpu');
});

const maxRel = (a: Float64Array, b: Float64Array) => {
  let diff = 0;
  let top = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs((a[i] as number) - (b[i] as number)));
    top = Math.max(top, Math.abs(b[i] as number));
  }
  return diff / top;
};

/** W = G₁·diag(3·0.85^j)·G₂ + noise: separated leading values, as trained weights have. */
function decaying(m: number, n: number, seed: number): Matrix64 {
  const k = Math.min(m, n);
  const g1 = randomMatrix(m, k, seed, 1 / Math.sqrt(m));
  const g2 = randomMatrix(k, n, seed + 1, 1 / Math.sqrt(n));
  for (let i = 0; i < m; i++)
    for (let j = 0; j < k; j++) g1.data[i * k + j] = (g1.data[i * k + j] as number) * 3 * 0.85 ** j;
  const w = matmul64(g1, g2);
  const noise = randomMatrix(m, n, seed + 2, 0.002);
  return { ...w, data: w.data.map((v, i) => v + (noise.data[i] as number)) };
}

async function ours(
  w: Matrix64,
  l: Matrix64,
  r: Matrix64,
  s: number,
  o: { topK: number; thresholdEpsilon: number; mitigationLambda: number },
) {
  const cache = new WeightSvdCache();
  const weight = await cache.svdOf('w', null, () => tf.tensor2d(Float32Array.from(w.data), [w.rows, w.cols]));
  const out = await reduceMatrix({ m: w.rows, n: w.cols, weight, left: l, right: r, scaling: s }, o);
  cache.dispose();
  return out;
}

describe('reduceMatrix against PEFT’s algorithm with three dense float64 SVDs', () => {
  const settings = { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.75 };
  for (const [m, n, r] of [
    [24, 12, 4],
    [12, 24, 4],
    [40, 40, 6],
    [90, 60, 8],
    [60, 150, 8],
  ] as const) {
    it(`${m}×${n}, r ${r}`, async () => {
      const w = randomMatrix(m, n, m * 7 + n, 0.3);
      const l = randomMatrix(m, r, 3 + m, 1);
      const rr = randomMatrix(r, n, 5 + n, 1);
      const ref = referenceReduction(w, l, rr, 2, settings);
      const got = await assertNoLeaks(() => ours(w, l, rr, 2, settings));
      expect(got.intruders).toEqual(ref.intruders);
      expect(ref.intruders.length).toBeGreaterThan(0);
      expect(maxRel(got.analysis.cosine, Float64Array.from(ref.cosine))).toBeLessThan(1e-5);
      const f = got.factors as { left: Matrix64; right: Matrix64 };
      const delta = matmul64(f.left, f.right).data.map((v) => v * 2);
      expect(maxRel(delta, ref.delta.data)).toBeLessThan(1e-5);
    });
  }
});

describe('the leading triplets of W + ΔW from the core', () => {
  const settings = { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.5 };
  it('block Krylov on the core when the leading values are separated (200×130, r 8)', async () => {
    const w = decaying(200, 130, 11);
    const l = randomMatrix(200, 8, 12, 0.15);
    const rr = randomMatrix(8, 130, 13, 0.15);
    const ref = referenceReduction(w, l, rr, 2, settings);
    const got = await assertNoLeaks(() => ours(w, l, rr, 2, settings));
    expect(got.analysis.method.kind).toBe('krylov');
    expect(got.intruders).toEqual(ref.intruders);
    expect(ref.intruders.length).toBeGreaterThan(0);
    expect(maxRel(got.analysis.cosine, Float64Array.from(ref.cosine))).toBeLessThan(1e-5);
    const f = got.factors as { left: Matrix64; right: Matrix64 };
    expect(
      maxRel(
        matmul64(f.left, f.right).data.map((v) => v * 2),
        ref.delta.data,
      ),
    ).toBeLessThan(1e-5);
  });
  it('block Krylov with restarts also when the spectrum is as flat as a random matrix’s (130×200, r 8)', async () => {
    const w = randomMatrix(130, 200, 21, 0.05);
    const l = randomMatrix(130, 8, 22, 0.5);
    const rr = randomMatrix(8, 200, 23, 0.5);
    const ref = referenceReduction(w, l, rr, 2, settings);
    const got = await assertNoLeaks(() => ours(w, l, rr, 2, settings));
    expect(got.analysis.method.kind).toBe('krylov');
    expect(got.intruders).toEqual(ref.intruders);
    expect(maxRel(got.analysis.cosine, Float64Array.from(ref.cosine))).toBeLessThan(1e-5);
    if (ref.intruders.length) {
      const f = got.factors as { left: Matrix64; right: Matrix64 };
      expect(
        maxRel(
          matmul64(f.left, f.right).data.map((v) => v * 2),
          ref.delta.data,
        ),
      ).toBeLessThan(1e-5);
    }
  });
});
