import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it, vi } from 'vitest';
import { Generator } from '@lora/tensor';
import { type Matrix64, LinalgError, matrix64, svd, svdTruncated } from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, reconstruct } from './fixtures.test-util';

/**
 * What ties_svd decomposes: a weighted sum of two rank-16 updates with 70% of its entries pruned by
 * magnitude: full rank, a slowly decaying top and a noise bulk.
 */
function prunedSum(m: number, n: number, seed: number): Matrix64 {
  const g = new Generator(seed);
  const f = (r: number, c: number) => g.fillNormal64(new Float64Array(r * c));
  const [b1, a1, b2, a2] = [f(m, 16), f(16, n), f(m, 16), f(16, n)];
  const x = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let t = 0; t < 16; t++) {
      const u1 = (b1[i * 16 + t] as number) * 0.5;
      const u2 = (b2[i * 16 + t] as number) * 1.5;
      for (let j = 0; j < n; j++)
        x[i * n + j] = (x[i * n + j] as number) + u1 * (a1[t * n + j] as number) + u2 * (a2[t * n + j] as number);
    }
  const cut = Float64Array.from(x, Math.abs).sort()[Math.floor(0.7 * x.length)] as number;
  // float32-representable, so that the tensor and the float64 reference hold the same matrix
  return { rows: m, cols: n, data: Float64Array.from(Float32Array.from(x, (v) => (Math.abs(v) >= cut ? v : 0))) };
}

/** max |ours − exact| / max |exact| over the rank-k truncations U·diag(S)·Vh. */
function truncationError(
  U: Matrix64,
  S: Float64Array,
  Vh: Matrix64,
  exact: { U: Matrix64; S: Float64Array; Vh: Matrix64 },
  k: number,
) {
  const pick = (x: Matrix64, cols: number) =>
    matrix64(
      x.rows,
      cols,
      Array.from({ length: x.rows * cols }, (_, i) => x.data[Math.floor(i / cols) * x.cols + (i % cols)] as number),
    );
  const want = reconstruct(
    pick(exact.U, k),
    exact.S.subarray(0, k),
    matrix64(k, exact.Vh.cols, exact.Vh.data.subarray(0, k * exact.Vh.cols)),
  );
  const got = reconstruct(U, S, Vh);
  let err = 0;
  let top = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs((got[i] as number) - (want[i] as number)));
    top = Math.max(top, Math.abs(want[i] as number));
  }
  return err / top;
}

/** `run()`'s result and how many times tensors were read back (`data()`) while it ran. */
async function countingReads<T>(run: () => Promise<T>): Promise<[T, number]> {
  const reads = vi.spyOn(tf.Tensor.prototype, 'data');
  try {
    const out = await run();
    return [out, reads.mock.calls.length];
  } finally {
    reads.mockRestore();
  }
}

const a = prunedSum(320, 280, 3);
const exact = svd(a);

describe('svdTruncated (float64)', () => {
  it('truncates the exact float64 SVD of a Matrix64, and checks its options', () => {
    const r = svdTruncated(a, { rank: 5 });
    expect([r.U.cols, r.S.length, r.Vh.rows]).toEqual([5, 5, 5]);
    expect(Array.from(r.S)).toEqual(Array.from(exact.S.subarray(0, 5)));
    expect(() => svdTruncated(a, { rank: 0 })).toThrow(
      'svdTruncated: rank 0 must be an integer in [1, min(m, n) = 280]',
    );
    expect(() => svdTruncated(a, { rank: 281 })).toThrow(LinalgError);
    expect(() => svdTruncated(a, { rank: 2, tol: 0 })).toThrow('svdTruncated: tol 0 must be positive');
    expect(() => svdTruncated(a, { rank: 2, oversample: -1 })).toThrow('oversample -1 must be a non-negative integer');
    expect(() => svdTruncated(a, { rank: 2, extraction: 'lu' as 'qr' })).toThrow(
      `svdTruncated: extraction "lu" must be 'qr' or 'gram'`,
    );
  });
});

await describeEachBackend('svdTruncated on tensors', () => {
  it("matches the exact SVD's top 16 triplets of a pruned combination to 1e-5, and leaks nothing", async () => {
    const t = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const before = tf.memory().numTensors;
    const r = await svdTruncated(t, { rank: 16 });
    expect(tf.memory().numTensors).toBe(before + 3);
    expect(r.converged).toBe(true);
    expect(r.iterations).toBeGreaterThan(1);
    expect(r.residual).toBeLessThanOrEqual(5e-6);
    const U = matrix64(320, 16, await r.U.data());
    const Vh = matrix64(16, 280, await r.Vh.data());
    const S = Float64Array.from(await r.S.data());
    tf.dispose([t, r.U, r.S, r.Vh]);
    for (let i = 0; i < 16; i++)
      expect(Math.abs((S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-5 * (exact.S[0] as number));
    expect(truncationError(U, S, Vh, exact, 16)).toBeLessThan(1e-5);
  });

  it('reads back six small matrices an iteration (CholeskyQR2 checks ride along with other reads)', async () => {
    const t = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const [r, reads] = await countingReads(() => svdTruncated(t, { rank: 16 }));
    // the random start's checked CholeskyQR2 (three), then six an iteration: two Gram matrices of a·z
    // (the first with z's check), Qᵀ·a·z, the residuals with Q's check, two Gram matrices of aᵀ·U
    expect(reads).toBeLessThanOrEqual(6 * r.iterations + 3);
    expect([r.converged, r.checked]).toEqual([true, 0]);
    tf.dispose([r.U, r.S, r.Vh, t]);
  });

  it('takes the checked path where CholeskyQR2 fails in float32 (a graded spectrum), with the same accuracy', async () => {
    // singular values 10^(−8·i/23): across the 24 columns the iteration carries, a·z is far too
    // ill-conditioned for a Cholesky of its float32 Gram matrix
    const g = new Generator(5);
    const q1 = svd({ rows: 240, cols: 160, data: g.fillNormal64(new Float64Array(240 * 160)) }).U;
    const q2 = svd({ rows: 200, cols: 160, data: g.fillNormal64(new Float64Array(200 * 160)) }).U;
    const sigma = Float64Array.from({ length: 160 }, (_, i) => 10 ** ((-8 * i) / 23));
    const graded = new Float64Array(240 * 200);
    for (let i = 0; i < 240; i++)
      for (let j = 0; j < 200; j++) {
        let v = 0;
        for (let p = 0; p < 160; p++)
          v += (q1.data[i * 160 + p] as number) * (sigma[p] as number) * (q2.data[j * 160 + p] as number);
        graded[i * 200 + j] = v;
      }
    const m = { rows: 240, cols: 200, data: Float64Array.from(Float32Array.from(graded)) };
    const want = svd(m);
    const t = tf.tensor2d(Float32Array.from(m.data), [240, 200]);
    const before = tf.memory().numTensors;
    // the Gram extraction reaches the tolerance here too (σ₈ ≈ 4·10⁻³·σ₁), its z made orthonormal again
    // where it drifted (`checked`)
    for (const extraction of ['qr', 'gram'] as const) {
      const r = await svdTruncated(t, { rank: 8, extraction });
      expect(r.checked).toBeGreaterThan(0);
      expect(r.converged).toBe(true);
      expect(tf.memory().numTensors).toBe(before + 3);
      const S = Float64Array.from(await r.S.data());
      const U = matrix64(240, 8, await r.U.data());
      const Vh = matrix64(8, 200, await r.Vh.data());
      tf.dispose([r.U, r.S, r.Vh]);
      for (let i = 0; i < 8; i++)
        expect(Math.abs((S[i] as number) - (want.S[i] as number))).toBeLessThan(1e-5 * (want.S[0] as number));
      expect(truncationError(U, S, Vh, want, 8)).toBeLessThan(1e-4);
    }
    t.dispose();
  });

  it("with extraction 'gram', one read-back an iteration, the same top 16 to 1e-5, and leaks nothing", async () => {
    const t = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const before = tf.memory().numTensors;
    const [r, reads] = await countingReads(() => svdTruncated(t, { rank: 16, extraction: 'gram' }));
    // the finiteness check, the random start's checked CholeskyQR2 (three), then one an iteration (the
    // last one's residuals are read alone only when the iterations run out: not here)
    expect(reads).toBe(r.iterations + 4);
    expect(tf.memory().numTensors).toBe(before + 3);
    expect([r.converged, r.checked]).toEqual([true, 0]);
    expect(r.residual).toBeLessThanOrEqual(5e-6);
    const U = matrix64(320, 16, await r.U.data());
    const Vh = matrix64(16, 280, await r.Vh.data());
    const S = Float64Array.from(await r.S.data());
    tf.dispose([t, r.U, r.S, r.Vh]);
    for (let i = 0; i < 16; i++)
      expect(Math.abs((S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-5 * (exact.S[0] as number));
    expect(truncationError(U, S, Vh, exact, 16)).toBeLessThan(1e-5);
    // U's columns orthonormal to float32's reach, as the QR extraction's are
    expect(orthogonalityError(U)).toBeLessThan(1e-5);
  });

  it("with extraction 'gram' on a flat top (a random weight plus a rank-16 update), as the QR extraction", async () => {
    const g = new Generator(11);
    const m = 300;
    const n = 260;
    const w = g.fillNormal64(new Float64Array(m * n));
    const l = g.fillNormal64(new Float64Array(m * 16));
    const rr = g.fillNormal64(new Float64Array(16 * n));
    const sum = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++) {
        let v = w[i * n + j] as number;
        for (let p = 0; p < 16; p++) v += 0.3 * (l[i * 16 + p] as number) * (rr[p * n + j] as number);
        sum[i * n + j] = v;
      }
    const x = { rows: m, cols: n, data: Float64Array.from(Float32Array.from(sum)) };
    const want = svd(x);
    const t = tf.tensor2d(Float32Array.from(x.data), [m, n]);
    const [byGram, byQr] = [
      await svdTruncated(t, { rank: 10, extraction: 'gram' }),
      await svdTruncated(t, { rank: 10 }),
    ];
    expect([byGram.converged, byGram.checked, byQr.converged]).toEqual([true, 0, true]);
    for (const r of [byGram, byQr]) {
      const S = Float64Array.from(await r.S.data());
      for (let i = 0; i < 10; i++)
        expect(Math.abs((S[i] as number) - (want.S[i] as number))).toBeLessThan(1e-5 * (want.S[0] as number));
      expect(
        truncationError(matrix64(m, 10, await r.U.data()), S, matrix64(10, n, await r.Vh.data()), want, 10),
      ).toBeLessThan(1e-5);
      tf.dispose([r.U, r.S, r.Vh]);
    }
    t.dispose();
  });

  it("with extraction 'gram', hands over to the QR extraction where it stalls or the top is rank-deficient", async () => {
    const t = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const before = tf.memory().numTensors;
    // a tolerance float32 cannot meet: the Gram extraction stalls, then the QR one (six reads an iteration)
    const [stalled, reads] = await countingReads(() =>
      svdTruncated(t, { rank: 16, extraction: 'gram', tol: 1e-9, maxIterations: 80 }),
    );
    expect(reads).toBeGreaterThan(stalled.iterations + 8);
    expect([stalled.converged, stalled.checked >= 1]).toEqual([false, true]);
    expect(stalled.residual).toBeLessThan(1e-6);
    expect(tf.memory().numTensors).toBe(before + 3);
    const S = Float64Array.from(await stalled.S.data());
    for (let i = 0; i < 16; i++)
      expect(Math.abs((S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-5 * (exact.S[0] as number));
    tf.dispose([stalled.U, stalled.S, stalled.Vh, t]);

    // rank 5, 8 asked for: σ₆…σ₈ = 0, whose u the Gram extraction cannot form
    const g = new Generator(21);
    const l = g.fillNormal64(new Float64Array(240 * 5));
    const rr = g.fillNormal64(new Float64Array(5 * 200));
    const low = new Float64Array(240 * 200);
    for (let i = 0; i < 240; i++)
      for (let j = 0; j < 200; j++) {
        let v = 0;
        for (let p = 0; p < 5; p++) v += (l[i * 5 + p] as number) * (rr[p * 200 + j] as number);
        low[i * 200 + j] = v;
      }
    const x = { rows: 240, cols: 200, data: Float64Array.from(Float32Array.from(low)) };
    const want = svd(x);
    const lt = tf.tensor2d(Float32Array.from(x.data), [240, 200]);
    const r = await svdTruncated(lt, { rank: 8, extraction: 'gram' });
    expect(r.checked).toBeGreaterThanOrEqual(1);
    expect(tf.memory().numTensors).toBe(before + 3); // t freed, lt and r held
    const S8 = Float64Array.from(await r.S.data());
    const U = matrix64(240, 8, await r.U.data());
    const Vh = matrix64(8, 200, await r.Vh.data());
    tf.dispose([lt, r.U, r.S, r.Vh]);
    for (let i = 0; i < 8; i++)
      expect(Math.abs((S8[i] as number) - (want.S[i] as number))).toBeLessThan(1e-5 * (want.S[0] as number));
    expect(truncationError(U, S8, Vh, want, 8)).toBeLessThan(1e-4);
  });

  it('decomposes small matrices whole, stops on an aborted signal, and reports progress', async () => {
    const small = tf.tensor2d(Float32Array.from(a.data.subarray(0, 100 * 280)), [100, 280]);
    const r = await svdTruncated(small, { rank: 3 });
    expect([r.iterations, r.converged]).toEqual([0, true]);
    tf.dispose([small, r.U, r.S, r.Vh]);
    const t = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    const seen: number[] = [];
    const run = svdTruncated(t, {
      rank: 16,
      signal: controller.signal,
      onProgress: (p) => {
        seen.push(p.done);
        if (p.done === 2) controller.abort(new Error('enough'));
      },
    });
    await expect(run).rejects.toThrow('enough');
    expect(seen).toEqual([1, 2]);
    expect(tf.memory().numTensors).toBe(before);
    t.dispose();
  });
});
