import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { type Matrix64, matmul64, matrix64, qr, transpose64 } from '@lora/linalg';
import { assertNoLeaks, initBackend } from '@lora/tensor';
import { analyseFromSum, sumTriplets } from './analyse-sum';
import { atomBound, CERTIFY_MARGIN, cosineUpperBounds, positiveDefinite } from './certify';
import { resolveSettings } from './options';
import { type MatrixAnalysis, thresholdAndMitigate } from './reduce-matrix';
import { reduceLayer } from './reduce-layer';
import { randomMatrix, referenceReduction } from './reference.test-util';
import { WeightSvdCache } from './weight-svd-cache';

/** q·diag(d): each column c of q times d[c]. */
function scaleColumns(q: Matrix64, d: readonly number[]): Matrix64 {
  const out = matrix64(q.rows, q.cols, Float64Array.from(q.data));
  for (let i = 0; i < q.rows; i++)
    for (let c = 0; c < q.cols; c++) out.data[i * q.cols + c] = (q.data[i * q.cols + c] as number) * (d[c] as number);
  return out;
}

beforeAll(async () => {
  await initBackend('cpu');
});

/** A random orthonormal m×k (Q of a Gaussian). */
const orthonormal = (m: number, k: number, seed: number): Matrix64 => qr(randomMatrix(m, k, seed, 1)).Q;

/** Lanczos on diag(lambda) from unit c, in float64: α₀…α_{N−1}, β₀…β_{N−1}, full re-orthogonalisation. */
function lanczos(lambda: number[], c: number[], steps: number) {
  const n = lambda.length;
  const qs: number[][] = [c.slice()];
  const alpha: number[] = [];
  const beta: number[] = [];
  for (let j = 0; j < steps; j++) {
    const q = qs[j] as number[];
    let z = q.map((x, i) => (lambda[i] as number) * x);
    alpha.push(z.reduce((s, x, i) => s + x * (q[i] as number), 0));
    for (let pass = 0; pass < 2; pass++)
      for (const p of qs) {
        const d = z.reduce((s, x, i) => s + x * (p[i] as number), 0);
        z = z.map((x, i) => x - d * (p[i] as number));
      }
    const b = Math.sqrt(z.reduce((s, x) => s + x * x, 0));
    beta.push(b);
    if (b < 1e-14 || qs.length >= n) break;
    qs.push(z.map((x) => x / b));
  }
  return { alpha, beta };
}

describe('atomBound (Chebyshev–Markov–Stieltjes on the Gauss rule)', () => {
  it('never falls below the heaviest atom: random spectra, spread and spiked vectors, ties', () => {
    let seed = 1;
    const rand = () => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    for (let trial = 0; trial < 60; trial++) {
      const n = 20 + Math.floor(rand() * 80);
      // clustered spectra and repeated values too (trial % 3)
      const lambda = Array.from({ length: n }, (_, i) =>
        trial % 3 === 0 ? Math.floor(rand() * 5) : trial % 3 === 1 ? 1 + 1e-6 * i : rand() * 4,
      );
      const c = Array.from({ length: n }, () => rand() - 0.5);
      // a spike of weight near 0.25 (ε = 0.5) on one coordinate
      const spike = Math.floor(rand() * n);
      const norm0 = Math.sqrt(c.reduce((s, x, i) => s + (i === spike ? 0 : x * x), 0));
      const target = 0.25 + (rand() - 0.5) * 0.02;
      for (let i = 0; i < n; i++)
        c[i] = i === spike ? Math.sqrt(target) : ((c[i] as number) / norm0) * Math.sqrt(1 - target);
      // atoms: mass per distinct value
      const mass = new Map<number, number>();
      lambda.forEach((l, i) => {
        mass.set(l, (mass.get(l) ?? 0) + (c[i] as number) ** 2);
      });
      const heaviest = Math.max(...mass.values());
      for (const steps of [2, 5, 12, 30]) {
        const { alpha, beta } = lanczos(lambda, c, steps);
        expect(atomBound(alpha, beta)).toBeGreaterThanOrEqual(heaviest - 1e-9);
      }
    }
  });

  it('is the exact weight when the Krylov space is invariant (few atoms)', () => {
    const lambda = [3, 3, 2, 1, 1, 0.5];
    const c = [0.6, 0, 0.48, 0, 0.64, 0];
    const { alpha, beta } = lanczos(lambda, c, 6);
    expect(alpha.length).toBe(3);
    expect(atomBound(alpha, beta)).toBeCloseTo(0.64 ** 2, 10);
  });
});

describe('positiveDefinite (block Cholesky, Schur complements on the backend)', () => {
  it('tells a shift just below λ_min from one just above, over several blocks, and frees what it allocates', async () => {
    const n = 300;
    const q = orthonormal(n, n, 31);
    const lambda = Array.from({ length: n }, (_, i) => 0.05 + (2 * i) / n);
    const a = matmul64(scaleColumns(q, lambda), q, { transposeB: true });
    const at = tf.tensor2d(Float32Array.from(a.data), [n, n]);
    const before = tf.memory().numTensors;
    expect(await positiveDefinite(at, 0.049, 64)).toBe(true);
    expect(await positiveDefinite(at, 0.051, 64)).toBe(false);
    expect(await positiveDefinite(at, 0.04, 512)).toBe(true);
    expect(await positiveDefinite(at, 1, 64)).toBe(false);
    expect(tf.memory().numTensors).toBe(before);
    at.dispose();
  });
});

describe('cosineUpperBounds on the backend', () => {
  it('bounds max_j |⟨u, u₀_j⟩| from above for W of m ≤ n, frees what it allocates', async () => {
    const [m, n] = [60, 90];
    const u0 = orthonormal(m, m, 3);
    const v0 = orthonormal(n, m, 4);
    const s = Array.from({ length: m }, (_, j) => 2 * 0.97 ** j);
    const w = matmul64(scaleColumns(u0, s), v0, { transposeB: true });
    // three unit vectors: spread, one with a 0.7 component on u₀_5, one equal to u₀_0
    const starts = matrix64(m, 3, randomMatrix(m, 3, 9, 1).data);
    for (let i = 0; i < m; i++) {
      const spread = starts.data[i * 3] as number;
      starts.data[i * 3 + 1] = 0.7 * (u0.data[i * m + 5] as number) + 0.1 * spread;
      starts.data[i * 3 + 2] = u0.data[i * m] as number;
    }
    for (let c = 0; c < 3; c++) {
      let nn = 0;
      for (let i = 0; i < m; i++) nn += (starts.data[i * 3 + c] as number) ** 2;
      for (let i = 0; i < m; i++) starts.data[i * 3 + c] = (starts.data[i * 3 + c] as number) / Math.sqrt(nn);
    }
    const exact = matmul64(transpose64(u0), starts);
    const wt = tf.tensor2d(Float32Array.from(w.data), [m, n]);
    const st = tf.tensor2d(Float32Array.from(starts.data), [m, 3]);
    const before = tf.memory().numTensors;
    const bounds = await cosineUpperBounds(wt, st, 24);
    expect(tf.memory().numTensors).toBe(before);
    for (let c = 0; c < 3; c++) {
      let best = 0;
      for (let j = 0; j < m; j++) best = Math.max(best, Math.abs(exact.data[j * 3 + c] as number));
      expect(bounds[c] as number).toBeGreaterThanOrEqual(best - 1e-5);
      expect(bounds[c] as number).toBeLessThanOrEqual(1);
    }
    // the direction equal to u₀_0 is bounded by (about) 1: it cannot be certified
    expect(bounds[2] as number).toBeGreaterThan(0.99);
    tf.dispose([wt, st]);
  });

  it('refuses a tall W there (its left null space is not among W’s singular vectors)', async () => {
    const wt = tf.zeros([5, 3]) as tf.Tensor2D;
    const st = tf.zeros([5, 1]) as tf.Tensor2D;
    await expect(cosineUpperBounds(wt, st, 4)).rejects.toThrow(/m ≤ n/);
    tf.dispose([wt, st]);
  });

  for (const [m, n] of [
    [300, 200],
    [200, 300],
  ] as const)
    it(`certifies a random ${m}×${n} W with a random r 16 adapter (as the benchmark's), bounds above PEFT's cosines`, async () => {
      const w = randomMatrix(m, n, 21, 0.02);
      const left = randomMatrix(m, 16, 22, 0.05);
      const right = randomMatrix(16, n, 23, 1 / Math.sqrt(n));
      const ref = referenceReduction(w, left, right, 2, { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.75 });
      expect(ref.intruders.length).toBe(10);
      await assertNoLeaks(async () => {
        const wt = tf.tensor2d(Float32Array.from(w.data), [m, n]);
        const top = await sumTriplets(wt, left, right, 2, 10);
        const got = await analyseFromSum(top, wt, null, 0.5);
        tf.dispose([wt, top.uTensor]);
        expect(got?.cosineBound).toBe(true);
        for (const [i, c] of (got as MatrixAnalysis).cosine.entries()) {
          expect(c).toBeGreaterThanOrEqual((ref.cosine[i] as number) - 1e-5);
          expect(c).toBeLessThan(0.5 - CERTIFY_MARGIN);
        }
        // W + ΔW's triplets from subspace iteration on the backend give PEFT's new ΔW
        const settings = { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.75 };
        const red = thresholdAndMitigate({ left, right, scaling: 2 }, settings, got as MatrixAnalysis);
        expect(red.intruders).toEqual(ref.intruders);
        const f = red.factors as { left: Matrix64; right: Matrix64 };
        const mine = matmul64(f.left, f.right);
        let diff = 0;
        let top2 = 0;
        mine.data.forEach((x, i) => {
          const want = (ref.delta.data[i] as number) / 2;
          diff = Math.max(diff, Math.abs(x - want));
          top2 = Math.max(top2, Math.abs(want));
        });
        expect(diff / top2).toBeLessThan(1e-4);
      });
    });
});

/**
 * W = U₀·diag(s₀)·V₀ᵀ (m×n) and a rank-4 ΔW that replaces W's directions a, b, c, d by Ũ = U₄·H, H
 * the Householder map of e₁ to (e0, x, x, x): W + ΔW's leading direction ũ₁ (σ = 10) has cosine
 * exactly e0 with u₀_a and √((1 − e0²)/3) with the three others — a cosine placed where we want it.
 */
function placed(m: number, n: number, e0: number) {
  const k = Math.min(m, n);
  const u0 = orthonormal(m, k, 11);
  const v0 = orthonormal(n, k, 12);
  const s0 = Array.from({ length: k }, (_, j) => 2 - (1.5 * j) / k);
  const atoms = [3, 10, 20, 40];
  const x = Math.sqrt((1 - e0 * e0) / 3);
  const q = [e0, x, x, x];
  const wv = [1 - e0, -x, -x, -x];
  const ww = wv.reduce((a, b) => a + b * b, 0);
  const h = (i: number, j: number) => (i === j ? 1 : 0) - (2 * (wv[i] as number) * (wv[j] as number)) / ww;
  expect(Math.abs(h(0, 0) - (q[0] as number))).toBeLessThan(1e-12);
  const sigma = [10, 0.3, 0.25, 0.2];
  const w = matrix64(m, n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let c = 0; c < k; c++)
        acc += (u0.data[i * k + c] as number) * (s0[c] as number) * (v0.data[j * k + c] as number);
      w.data[i * n + j] = acc;
    }
  // L = Ũ·diag(σ) − U₄·diag(s₀_4) (m×4), R = V₄ᵀ (4×n)
  const left = matrix64(m, 4);
  const right = matrix64(4, n);
  atoms.forEach((at, c) => {
    for (let i = 0; i < m; i++) {
      let ut = 0;
      atoms.forEach((a2, l) => {
        ut += (u0.data[i * k + a2] as number) * h(l, c);
      });
      left.data[i * 4 + c] = (sigma[c] as number) * ut - (s0[at] as number) * (u0.data[i * k + at] as number);
    }
    for (let j = 0; j < n; j++) right.data[c * n + j] = v0.data[j * k + at] as number;
  });
  return { w, left, right };
}

async function layerOf(
  w: Matrix64,
  left: Matrix64,
  right: Matrix64,
  epsilon: number,
  { exactCosines = false, certify = true as boolean | 'default' } = {},
) {
  const { rows: m, cols: n } = w;
  const cache = new WeightSvdCache();
  // a Linear: A (r×n) = R, B (m×r) = L, s = 1
  const input = {
    path: 'layer',
    layout: { orientation: 'direct' as const, m, n, r: 4, aShape: [4, n], bShape: [m, 4] },
    weightKey: 'w',
    weightVersion: null,
    factorVersions: ['f'],
    weightMatrix: () => tf.tensor2d(Float32Array.from(w.data), [m, n]),
    a: Float32Array.from(right.data),
    b: Float32Array.from(left.data),
    scaling: 1,
  };
  const settings = resolveSettings({
    topK: 1,
    thresholdEpsilon: epsilon,
    mitigationLambda: 0.5,
    loggingSink: null,
    exactCosines,
    // the tests run on the cpu backend, where the default is not to try the certificate
    ...(certify === 'default' ? {} : { certify }),
  });
  const out = await reduceLayer(input, settings, cache);
  const computed = cache.stats.computed;
  cache.dispose();
  return { ...out, computed };
}

describe('the certified path decides as PEFT does near the threshold', () => {
  // min(m, n) ≥ 128 so that W + ΔW's triplets come from subspace iteration, as on real layers; wide and tall
  for (const [m, n, e0, epsilon, intruder, certified] of [
    [130, 150, 0.9 + 1e-4, 0.9, false, false],
    [130, 150, 0.9 - 1e-4, 0.9, true, false],
    [130, 150, 0.9 - 2 * CERTIFY_MARGIN, 0.9, true, true],
    [130, 150, 0.85, 0.9, true, true],
    [150, 130, 0.9 + 1e-4, 0.9, false, false],
    [150, 130, 0.9 - 1e-4, 0.9, true, false],
    [150, 130, 0.85, 0.9, true, true],
  ] as const)
    it(`${m}×${n}, cosine ${e0} against ε ${epsilon}: ${intruder ? 'an intruder' : 'not one'}, ${certified ? 'certified without' : 'decided from'} W's SVD`, async () => {
      const { w, left, right } = placed(m, n, e0);
      const ref = referenceReduction(w, left, right, 1, { topK: 1, thresholdEpsilon: epsilon, mitigationLambda: 0.5 });
      expect(ref.cosine[0]).toBeCloseTo(e0, 9);
      await assertNoLeaks(async () => {
        const { report, factors, computed } = await layerOf(w, left, right, epsilon);
        expect(report.intruders.length).toBe(intruder ? 1 : 0);
        expect(report.intruders).toEqual(ref.intruders);
        expect(report.cosineBound).toBe(certified);
        expect(computed).toBe(certified ? 0 : 1);
        // bound or exact, the reported value is at least the cosine, and exact when W's SVD was taken
        expect(report.cosine[0] as number).toBeGreaterThanOrEqual(e0 - 1e-5);
        if (!certified) expect(Math.abs((report.cosine[0] as number) - e0)).toBeLessThan(1e-5);
        if (intruder) {
          // ΔW′ = L′·R′ against the reference's s·L′·R′
          const l = matrix64(m, 4, Float64Array.from((factors as { b: Float32Array }).b));
          const r = matrix64(4, n, Float64Array.from((factors as { a: Float32Array }).a));
          const got = matmul64(l, r);
          let diff = 0;
          let top = 0;
          got.data.forEach((g, i) => {
            diff = Math.max(diff, Math.abs(g - (ref.delta.data[i] as number)));
            top = Math.max(top, Math.abs(ref.delta.data[i] as number));
          });
          expect(diff / top).toBeLessThan(1e-4);
        } else expect(factors).toBeNull();
      });
    });
});

describe('whether the certificate is tried', () => {
  it('on a CPU backend not by default: the layer takes W’s SVD, with the same intruders and exact cosines', async () => {
    expect(tf.getBackend()).toBe('cpu');
    const { w, left, right } = placed(130, 150, 0.85);
    await assertNoLeaks(async () => {
      const tried = await layerOf(w, left, right, 0.9);
      const byDefault = await layerOf(w, left, right, 0.9, { certify: 'default' });
      expect(tried.report.cosineBound).toBe(true);
      expect(tried.computed).toBe(0);
      expect(byDefault.report.cosineBound).toBe(false);
      expect(byDefault.computed).toBe(1);
      expect(byDefault.report.intruders).toEqual(tried.report.intruders);
      expect(Math.abs((byDefault.report.cosine[0] as number) - 0.85)).toBeLessThan(1e-5);
    });
  });

  it('certify must be a boolean', () => {
    expect(() => resolveSettings({ certify: 'yes' as unknown as boolean })).toThrow(
      /certify "yes" must be true or false/,
    );
  });
});
