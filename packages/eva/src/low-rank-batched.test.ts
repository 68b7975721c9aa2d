import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, matmul64 } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { expect, it } from 'vitest';
import { type Stack, orthonormalize, perMatrix, stackShape, stackValues } from './low-rank-batched';

/**
 * L matrices r×q: Gaussian columns scaled from 1 down to 1/kappa (r ≫ q, so the condition number is
 * about 1.5·kappa; no mixing by a square Gaussian, whose own condition number is unbounded).
 */
function illConditioned(L: number, r: number, q: number, kappa: number, seed: number): Float32Array {
  const out = new Generator(seed).fillNormal(new Float32Array(L * r * q));
  for (let i = 0; i < L * r; i++)
    for (let c = 0; c < q; c++) out[i * q + c] = (out[i * q + c] as number) * kappa ** (-c / (q - 1));
  return out;
}

/** max |QᵀQ − I| of each matrix of a stack of values [L, r, q]. */
function orthogonalityError(values: Float32Array, L: number, r: number, q: number): number[] {
  return Array.from({ length: L }, (_, l) => {
    let worst = 0;
    for (let a = 0; a < q; a++)
      for (let b = 0; b < q; b++) {
        let s = 0;
        for (let i = 0; i < r; i++)
          s += (values[l * r * q + i * q + a] as number) * (values[l * r * q + i * q + b] as number);
        worst = Math.max(worst, Math.abs(s - (a === b ? 1 : 0)));
      }
    return worst;
  });
}

function asStack(values: Float32Array, L: number, r: number, q: number): Stack {
  const t = tf.tensor3d(values, [L, r, q]);
  if (!perMatrix()) return t;
  const parts = Array.from({ length: L }, (_, l) => tf.tensor2d(values.subarray(l * r * q, (l + 1) * r * q), [r, q]));
  t.dispose();
  return parts;
}

await describeEachBackend('orthonormalize (shifted CholeskyQR over a stack)', () => {
  const [L, r, q] = [3, 120, 16];

  it('gives orthonormal Q to float32 precision and R with Q·R = y (kappa 1e3)', async () => {
    const before = tf.memory().numTensors;
    const y = illConditioned(L, r, q, 1e3, 1);
    const { Q, R } = await orthonormalize(asStack(y, L, r, q));
    expect(stackShape(Q)).toEqual([L, r, q]);
    const values = await stackValues(Q);
    for (const e of orthogonalityError(values, L, r, q)) expect(e).toBeLessThan(1e-5);
    // Q·R reproduces y (float64 product of the float32 Q with the float64 R)
    for (let l = 0; l < L; l++) {
      const Ql: Matrix64 = { rows: r, cols: q, data: Float64Array.from(values.subarray(l * r * q, (l + 1) * r * q)) };
      const QR = matmul64(Ql, R[l] as Matrix64);
      let err = 0;
      let scale = 0;
      for (let i = 0; i < r * q; i++) {
        err = Math.max(err, Math.abs((QR.data[i] as number) - (y[l * r * q + i] as number)));
        scale = Math.max(scale, Math.abs(y[l * r * q + i] as number));
      }
      expect(err / scale).toBeLessThan(1e-5);
    }
    tf.dispose(Q);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('onePass: one CholeskyQR pass leaves a well-conditioned basis of the same span, without R', async () => {
    const before = tf.memory().numTensors;
    const y = illConditioned(L, r, q, 300, 2);
    const { Q, R } = await orthonormalize(asStack(y, L, r, q), { wantR: false, onePass: true });
    expect(R).toEqual([]);
    const values = await stackValues(Q);
    // one pass: ‖QᵀQ − I‖ about κ²·2⁻²⁴ (~0.01 at κ ≈ 450), far from the 1 of a degenerate basis
    for (const e of orthogonalityError(values, L, r, q)) expect(e).toBeLessThan(0.1);
    // the same span: y's columns projected on Q's span (after a full orthonormalisation of Q) are y
    const full = await orthonormalize(asStack(values, L, r, q), { wantR: false });
    const basis = await stackValues(full.Q);
    for (let l = 0; l < L; l++) {
      let worst = 0;
      for (let c = 0; c < q; c++) {
        const col = Array.from({ length: r }, (_, i) => y[l * r * q + i * q + c] as number);
        const norm = Math.hypot(...col);
        const resid = col.slice();
        for (let b = 0; b < q; b++) {
          let dot = 0;
          for (let i = 0; i < r; i++) dot += (basis[l * r * q + i * q + b] as number) * (col[i] as number);
          for (let i = 0; i < r; i++) resid[i] = (resid[i] as number) - dot * (basis[l * r * q + i * q + b] as number);
        }
        worst = Math.max(worst, Math.hypot(...resid) / norm);
      }
      expect(worst).toBeLessThan(1e-3);
    }
    tf.dispose([Q, full.Q]);
    expect(tf.memory().numTensors).toBe(before);
  });
});
