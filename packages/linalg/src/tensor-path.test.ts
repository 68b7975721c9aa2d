import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { LinalgError, cholesky, eigh, matrix64, norm, qr, solveTriangular, svd, transpose64 } from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, readFixture, reconstruct, relFro } from './fixtures.test-util';

const battery = readFixture('lapack-battery.safetensors');
const f32 = (m: { rows: number; cols: number; data: Float64Array }) =>
  tf.tensor2d(Float32Array.from(m.data), [m.rows, m.cols]);
const read = async (t: tf.Tensor, rows: number, cols: number) => matrix64(rows, cols, await t.data());

// The tensor path decomposes in float64 and returns float32: results are float32-exact.
await describeEachBackend('tensor path', () => {
  it('svd of a 120x40 tensor: reconstruction, orthogonality and S within float32 precision', async () => {
    const a = battery.get('gauss_tall_120x40.a');
    const t = f32(a);
    const before = tf.memory().numTensors;
    const r = await svd(t);
    expect(tf.memory().numTensors).toBe(before + 3);
    const U = await read(r.U, 120, 40);
    const Vh = await read(r.Vh, 40, 40);
    const S = Float64Array.from(await r.S.data());
    expect(relFro(reconstruct(U, S, Vh), a.data)).toBeLessThan(1e-5);
    expect(orthogonalityError(U)).toBeLessThan(1e-5);
    expect(orthogonalityError(transpose64(Vh))).toBeLessThan(1e-5);
    expect(relFro(S, battery.vector('gauss_tall_120x40.s'))).toBeLessThan(1e-5);
    tf.dispose([t, r.U, r.S, r.Vh]);
  });

  it('qr, eigh, cholesky, solveTriangular and norm on tensors', async () => {
    const a = battery.get('gauss_wide_30x90.a');
    const t = f32(a);
    const before = tf.memory().numTensors;
    const { Q, R } = await qr(t);
    const back = tf.matMul(Q, R);
    expect(relFro(Float64Array.from(await back.data()), a.data)).toBeLessThan(1e-5);
    const sym = battery.get('sym_gauss_50.sym');
    const ts = f32(sym);
    const e = await eigh(ts as tf.Tensor2D);
    expect(relFro(Float64Array.from(await e.values.data()), battery.vector('sym_gauss_50.w'))).toBeLessThan(1e-5);
    const spd = tf.tidy(() => tf.add(tf.matMul(ts, ts, false, true), tf.mul(tf.eye(50), 0.5))) as tf.Tensor2D;
    const L = await cholesky(spd);
    const llt = tf.matMul(L, L, false, true);
    expect(relFro(Float64Array.from(await llt.data()), Float64Array.from(await spd.data()))).toBeLessThan(1e-5);
    const b = tf.ones([50, 2]) as tf.Tensor2D;
    const x = await solveTriangular(L, b, { upper: false });
    const lx = tf.matMul(L, x);
    expect(relFro(Float64Array.from(await lx.data()), new Float64Array(100).fill(1))).toBeLessThan(1e-4);
    expect(Math.abs((await norm(t, 2)) / (battery.vector('gauss_wide_30x90.s')[0] as number) - 1)).toBeLessThan(1e-6);
    tf.dispose([Q, R, back, ts, e.values, e.vectors, spd, L, llt, b, x, lx]);
    expect(tf.memory().numTensors).toBe(before);
    t.dispose();
  });

  it('rejects a NaN tensor and a 3-D tensor clearly', async () => {
    const bad = tf.tensor2d([1, Number.NaN, 3, 4], [2, 2]);
    await expect(svd(bad)).rejects.toThrow(LinalgError);
    await expect(svd(bad)).rejects.toThrow(/has NaN at \(0, 1\)/);
    const cube = tf.zeros([2, 2, 2]);
    await expect(qr(cube as unknown as tf.Tensor2D)).rejects.toThrow(/expected a 2-D tensor, got shape \[2, 2, 2\]/);
    tf.dispose([bad, cube]);
  });
});
