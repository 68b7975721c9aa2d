import * as tf from '@tensorflow/tfjs-core';
import { svd } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { expect, it } from 'vitest';
import { orthonormalizeOnBackend, stackValues, svdLowRankBatched, svdLowRankOnBackend } from './low-rank-batched';
import { choleskyInverseStack, factorsOnBackend, jacobiSvdStack } from './small-factor';

/** L matrices r×q with columns scaled from 1 down to 1/kappa. */
function illConditioned(L: number, r: number, q: number, kappa: number, seed: number): Float32Array {
  const out = new Generator(seed).fillNormal(new Float32Array(L * r * q));
  for (let i = 0; i < L * r; i++)
    for (let c = 0; c < q; c++) out[i * q + c] = (out[i * q + c] as number) * kappa ** (-c / (q - 1));
  return out;
}

/** max |AᵀB − I| (or AᵀA when b is omitted) of matrix l of stacks [L, r, q]. */
function gramError(a: Float32Array, l: number, r: number, q: number, b = a): number {
  let worst = 0;
  for (let x = 0; x < q; x++)
    for (let y = 0; y < q; y++) {
      let s = 0;
      for (let i = 0; i < r; i++) s += (a[l * r * q + i * q + x] as number) * (b[l * r * q + i * q + y] as number);
      worst = Math.max(worst, Math.abs(s - (x === y ? 1 : 0)));
    }
  return worst;
}

await describeEachBackend('q×q factorisations on the backend (CholeskyQR, Jacobi SVD)', (backend) => {
  const onBackend = () => factorsOnBackend();

  it('runs on webgpu and cpu only (wasm and tensorflow keep the host path)', () => {
    expect(onBackend()).toBe(backend.name === 'webgpu' || backend.name === 'cpu');
  });

  it('inverts the Cholesky factor of a Gram matrix: R⁻ᵀ·G·R⁻¹ = I, R⁻¹ upper triangular', async () => {
    if (!onBackend()) return;
    const [L, r, q] = [3, 200, 24];
    const before = tf.memory().numTensors;
    const y = tf.tensor3d(illConditioned(L, r, q, 30, 1), [L, r, q]);
    const G = tf.matMul(y, y, true, false) as tf.Tensor3D;
    const inv = choleskyInverseStack(G);
    const ri = (await inv.data()) as Float32Array;
    for (let l = 0; l < L; l++)
      for (let i = 0; i < q; i++) for (let j = 0; j < i; j++) expect(ri[l * q * q + i * q + j]).toBe(0);
    const Q = tf.matMul(y, inv);
    const qv = (await Q.data()) as Float32Array;
    for (let l = 0; l < L; l++) expect(gramError(qv, l, r, q)).toBeLessThan(2e-3);
    tf.dispose([y, G, inv, Q]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('shifts a singular Gram matrix until it factors, and gives the identity for a zero one', async () => {
    if (!onBackend()) return;
    const q = 8;
    const v = illConditioned(1, 40, q, 3, 2);
    for (let i = 0; i < 40; i++) v[i * q + 5] = v[i * q + 4] as number; // two equal columns: rank q − 1
    const y = tf.tensor3d(v, [1, 40, q]);
    const G = tf.concat([tf.matMul(y, y, true, false), tf.zeros([1, q, q])]) as tf.Tensor3D;
    const inv = choleskyInverseStack(G);
    const ri = (await inv.data()) as Float32Array;
    for (let i = 0; i < q * q; i++) expect(Number.isFinite(ri[i])).toBe(true);
    expect(ri[0]).toBeGreaterThan(0);
    for (let i = 0; i < q; i++) for (let j = 0; j < q; j++) expect(ri[q * q + i * q + j]).toBe(i === j ? 1 : 0);
    tf.dispose([y, G, inv]);
  });

  it('three passes leave Q orthonormal to float32 precision (kappa 1e3)', async () => {
    if (!onBackend()) return;
    const [L, r, q] = [2, 300, 32];
    const y = tf.tensor3d(illConditioned(L, r, q, 1e3, 3), [L, r, q]);
    const Q = orthonormalizeOnBackend(y, 3);
    const qv = (await Q.data()) as Float32Array;
    for (let l = 0; l < L; l++) expect(gramError(qv, l, r, q)).toBeLessThan(1e-5);
    tf.dispose([y, Q]);
  });

  it("Jacobi's SVD matches the float64 SVD: values descending, vectors up to sign", async () => {
    if (!onBackend()) return;
    const [L, q] = [3, 16];
    const values = illConditioned(L, q, q, 100, 4);
    const R = tf.tensor3d(values, [L, q, q]);
    for (const left of [true, false]) {
      const before = tf.memory().numTensors;
      const { W, S } = jacobiSvdStack(R, left);
      const w = (await W.data()) as Float32Array;
      const s = (await S.data()) as Float32Array;
      for (let l = 0; l < L; l++) {
        const f = svd({ rows: q, cols: q, data: Float64Array.from(values.subarray(l * q * q, (l + 1) * q * q)) });
        for (let i = 0; i < q; i++) {
          expect(Math.abs((s[l * q + i] as number) / (f.S[i] as number) - 1)).toBeLessThan(1e-5);
          let dot = 0;
          for (let k = 0; k < q; k++) {
            const ref = left ? (f.U.data[k * q + i] as number) : (f.Vh.data[i * q + k] as number);
            dot += (w[l * q * q + k * q + i] as number) * ref;
          }
          expect(Math.abs(dot)).toBeGreaterThan(1 - 1e-4);
        }
        expect(gramError(w, l, q, q)).toBeLessThan(1e-5);
      }
      tf.dispose([W, S]);
      expect(tf.memory().numTensors).toBe(before);
    }
    R.dispose();
  });

  it('the randomized SVD on the backend agrees with the host-factored one (tall and wide)', async () => {
    if (!onBackend()) return;
    for (const [m, d] of [
      [90, 40],
      [40, 90],
    ] as const) {
      const [L, q, k] = [2, 12, 6];
      // a decaying spectrum, as a PCA's: columns scaled 1 … 1/50 after a mix
      const M = tf.tidy(() =>
        tf.matMul(
          tf.tensor3d(illConditioned(L, m, d, 50, 5), [L, m, d]),
          tf.tensor2d(illConditioned(1, d, d, 1, 6), [d, d]),
        ),
      ) as tf.Tensor3D;
      const sketch = tf.tensor2d(new Generator(42).fillNormal(new Float32Array(Math.min(m, d) * q)), [
        Math.min(m, d),
        q,
      ]);
      const before = tf.memory().numTensors;
      const mine = svdLowRankOnBackend(M, { q, niter: 4, k, sketch });
      expect(tf.memory().numTensors).toBe(before + 2);
      const host = await svdLowRankBatched(M, { q, niter: 4, k, sketch });
      const s = (await mine.S.data()) as Float32Array;
      const vt = (await mine.Vt.data()) as Float32Array;
      const ref = await stackValues(host.Vt);
      expect(mine.Vt.shape).toEqual([L, k, d]);
      for (let l = 0; l < L; l++) {
        for (let i = 0; i < q; i++)
          expect(Math.abs((s[l * q + i] as number) / ((host.S[l] as Float64Array)[i] as number) - 1)).toBeLessThan(
            1e-4,
          );
        for (let i = 0; i < k; i++) {
          let dot = 0;
          for (let j = 0; j < d; j++) dot += (vt[(l * k + i) * d + j] as number) * (ref[(l * k + i) * d + j] as number);
          expect(Math.abs(dot)).toBeGreaterThan(0.9999);
        }
      }
      tf.dispose([M, sketch, mine.S, mine.Vt, host.Vt]);
    }
  });
});
