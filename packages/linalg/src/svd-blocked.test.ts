import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type Matrix64, LinalgError, matrix64, svd, transpose64 } from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, readFixture, reconstruct, relFro } from './fixtures.test-util';
import { largeBattery } from './large-matrices.test-util';

const battery = readFixture('lapack-battery.safetensors');
const shapes = JSON.parse(battery.metadata.matrices as string) as Record<string, [number, number]>;
const f32 = (m: Matrix64) => tf.tensor2d(Float32Array.from(m.data), [m.rows, m.cols]);
const read = async (t: tf.Tensor) => matrix64(t.shape[0] as number, t.shape[1] as number, await t.data());

/** The float32 contract: S within 1e-5·σ₁ of LAPACK's, U·S·Vh = A and orthonormal factors within 1e-5. */
async function expectFloat32Svd(a: Matrix64, lapack: Float64Array, label: string, full = false) {
  const t = f32(a);
  const before = tf.memory().numTensors;
  const r = await svd(t, { method: 'backend', fullMatrices: full });
  expect(tf.memory().numTensors, `${label}: only U, S, Vh are new`).toBe(before + 3);
  const k = Math.min(a.rows, a.cols);
  const U = await read(r.U);
  const Vh = await read(r.Vh);
  const S = Float64Array.from(await r.S.data());
  tf.dispose([t, r.U, r.S, r.Vh]);
  expect([U.rows, U.cols, S.length, Vh.rows, Vh.cols]).toEqual(
    full ? [a.rows, a.rows, k, a.cols, a.cols] : [a.rows, k, k, k, a.cols],
  );
  const smax = lapack[0] as number;
  for (let i = 0; i < k; i++) {
    expect(Math.abs((S[i] as number) - (lapack[i] as number)), `${label} σ${i}`).toBeLessThanOrEqual(
      1e-5 * smax + 1e-37,
    );
    if (i > 0) expect(S[i], `${label}: descending`).toBeLessThanOrEqual(S[i - 1] as number);
  }
  if (smax === 0) return;
  expect(orthogonalityError(U), `${label}: UᵀU = I`).toBeLessThan(1e-5);
  expect(orthogonalityError(transpose64(Vh)), `${label}: VᵀV = I`).toBeLessThan(1e-5);
  const uk = matrix64(
    a.rows,
    k,
    Array.from({ length: a.rows * k }, (_, i) => U.data[Math.floor(i / k) * U.cols + (i % k)] as number),
  );
  const vk = matrix64(k, a.cols, Vh.data.subarray(0, k * a.cols));
  expect(relFro(reconstruct(uk, S, vk), a.data), `${label}: U·S·Vh = A`).toBeLessThan(1e-5);
}

await describeEachBackend('svd on the backend (float32, blocked Householder + divide and conquer)', (backend) => {
  it('meets the float32 contract on the LAPACK battery (Gaussian, rank-deficient, ill-conditioned, repeated, clustered, zero, scaled, graded)', async () => {
    for (const name of Object.keys(shapes)) {
      const a = battery.get(`${name}.a`);
      if (name === 'tiny_30x20' || name === 'huge_30x20') continue; // outside float32's range
      await expectFloat32Svd(a, battery.vector(`${name}.s`), name);
    }
  }, 300_000);

  it('meets it on larger matrices: Hilbert, graded, clustered, rank-deficient, tall (QR first) and wide', async () => {
    for (const { name, a, s } of largeBattery()) await expectFloat32Svd(a, s, name);
  }, 300_000);

  it('returns full matrices when asked, tall and wide, with and without QR first', async () => {
    for (const name of ['gauss_tall_120x40', 'gauss_wide_30x90', 'gauss_tall_300x20'])
      await expectFloat32Svd(battery.get(`${name}.a`), battery.vector(`${name}.s`), name, true);
    const wide = largeBattery().find((x) => x.name === 'sines_150x400');
    if (wide) await expectFloat32Svd(wide.a, wide.s, wide.name, true);
  }, 300_000);

  it('reports progress by stage, stops on an aborted signal leaving no tensor, and names bad input', async () => {
    const { a } = largeBattery().find((x) => x.name === 'tall_graded_600x150') as { a: Matrix64 };
    const t = f32(a);
    const stages = new Set<string>();
    const r = await svd(t, { method: 'backend', onProgress: (p) => stages.add(p.stage) });
    tf.dispose([r.U, r.S, r.Vh]);
    // on webgpu the thin SVD is the blocked Jacobi one (svd-jacobi.ts): it reports 'qr' as it tries CholeskyQR2
    // (4× as tall as wide), which refuses this graded matrix (κ ≫ 10³), and takes the input whole
    const expected =
      backend.name === 'webgpu' ? ['qr', 'jacobi', 'vectors'] : ['qr', 'bidiagonalize', 'solve', 'vectors'];
    expect([...stages]).toEqual(expected);
    const before = tf.memory().numTensors;
    for (const stage of expected) {
      const controller = new AbortController();
      const run = svd(t, {
        method: 'backend',
        signal: controller.signal,
        onProgress: (p) => {
          if (p.stage === stage) controller.abort(new Error(`stop in ${stage}`));
        },
      });
      await expect(run).rejects.toThrow(`stop in ${stage}`);
      expect(tf.memory().numTensors, stage).toBe(before);
    }
    const done = new AbortController();
    done.abort();
    await expect(svd(t, { method: 'backend', signal: done.signal })).rejects.toThrow();
    t.dispose();
    const start = tf.memory().numTensors;
    const bad = tf.tensor2d([1, Number.NaN, 3, 4], [2, 2]);
    await expect(svd(bad, { method: 'backend' })).rejects.toThrow('svd: input has NaN at (0, 1)');
    await expect(svd(bad, { method: 'nope' as 'auto' })).rejects.toThrow(LinalgError);
    bad.dispose();
    expect(tf.memory().numTensors).toBe(start);
  }, 300_000);
});
