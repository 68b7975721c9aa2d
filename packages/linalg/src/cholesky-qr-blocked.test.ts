import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { matrix64 } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { choleskyQr2Blocked } from './cholesky-qr-blocked';
import { choleskyUpper, invertUpper } from './svd-low-rank';
import { orthogonalityError, relFro } from './fixtures.test-util';
import { withSpectrum } from './large-matrices.test-util';

await describeEachBackend('CholeskyQR2 with a blocked Cholesky', () => {
  it('factors a tall matrix with blocks that do not divide n: Q orthonormal, R upper, Q·R = X', async () => {
    const m = 300;
    const n = 150;
    const x = Float32Array.from(new Generator(3).fillNormal(new Float32Array(m * n)));
    const t = tf.tensor2d(x, [m, n]);
    const before = tf.memory().numTensors;
    const r = await choleskyQr2Blocked(t, { block: 64 });
    expect(r).not.toBeNull();
    const { q, r: rr } = r as NonNullable<typeof r>;
    expect(tf.memory().numTensors).toBe(before + 2);
    const Q = matrix64(m, n, await q.data());
    const R = matrix64(n, n, await rr.data());
    const qr = tf.matMul(q, rr);
    const prod = await qr.data();
    tf.dispose([q, rr, qr, t]);
    expect(orthogonalityError(Q)).toBeLessThan(1e-5);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(R.data[i * n + j]).toBe(0);
    expect(relFro(Float64Array.from(prod), Float64Array.from(x))).toBeLessThan(1e-5);
  });

  it('refuses (null, nothing left behind) where X is too ill-conditioned for float32, and a wide X', async () => {
    const graded = withSpectrum(
      200,
      60,
      Array.from({ length: 60 }, (_, i) => 10 ** (-7 * (i / 59))),
    );
    const t = tf.tensor2d(Float32Array.from(graded.data), [200, 60]);
    const wide = tf.zeros([10, 20]) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    expect(await choleskyQr2Blocked(t, { block: 32 })).toBeNull();
    expect(await choleskyQr2Blocked(wide)).toBeNull();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([t, wide]);
  });
});

it('factors a block on the host: Rᵀ·R = G, R·R⁻¹ = I at the blocked Cholesky’s sizes; null where G is not positive definite', () => {
  for (const k of [1, 2, 7, 64, 129]) {
    const gen = new Generator(k);
    const a = Float64Array.from(gen.fillNormal(new Float32Array(k * k)));
    // G = AᵀA + k·I: positive definite, with a spread of eigenvalues
    const g = new Float64Array(k * k);
    for (let i = 0; i < k; i++)
      for (let j = 0; j < k; j++) {
        let s = i === j ? k : 0;
        for (let p = 0; p < k; p++) s += (a[p * k + i] as number) * (a[p * k + j] as number);
        g[i * k + j] = s;
      }
    const r = choleskyUpper(g, k) as Float64Array;
    expect(r, `k ${k}`).not.toBeNull();
    const inv = invertUpper(r, k);
    let gErr = 0;
    let iErr = 0;
    let gMax = 0;
    for (let i = 0; i < k; i++)
      for (let j = 0; j < k; j++) {
        if (i > j) {
          expect(r[i * k + j]).toBe(0);
          expect(inv[i * k + j]).toBe(0);
        }
        let s = 0;
        let t = 0;
        for (let p = 0; p < k; p++) {
          s += (r[p * k + i] as number) * (r[p * k + j] as number);
          t += (r[i * k + p] as number) * (inv[p * k + j] as number);
        }
        gMax = Math.max(gMax, Math.abs(g[i * k + j] as number));
        gErr = Math.max(gErr, Math.abs(s - (g[i * k + j] as number)));
        iErr = Math.max(iErr, Math.abs(t - (i === j ? 1 : 0)));
      }
    expect(gErr / gMax, `k ${k}: RᵀR = G`).toBeLessThan(1e-13);
    expect(iErr, `k ${k}: R·R⁻¹ = I`).toBeLessThan(1e-12);
  }
  // indefinite: the second pivot is 1 − 4 < 0
  expect(choleskyUpper(Float64Array.from([1, 2, 2, 1]), 2)).toBeNull();
  expect(choleskyUpper(Float64Array.from([Number.NaN]), 1)).toBeNull();
});
