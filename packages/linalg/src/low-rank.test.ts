import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { IncrementalPCA, matmul64, matrix64, svdFlip, svdLowRank, transpose64 } from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { readFixture, reconstruct, relFro } from './fixtures.test-util';

const low = readFixture('svd-lowrank.safetensors');
const cases = JSON.parse(low.metadata.cases as string) as {
  name: string;
  q: number;
  niter: number;
  seed: number;
  exact_rank: number | null;
}[];

describe(`svdLowRank (float64) against torch.svd_lowrank (torch ${low.metadata.torch}, CPU)`, () => {
  for (const c of cases) {
    it(`${c.name}: same S and U·diag(S)·Vᵀ as torch with the same seed`, () => {
      const a = low.get(`${c.name}.a`);
      const { U, S, V } = svdLowRank(a, { q: c.q, niter: c.niter, seed: c.seed, sketchDtype: 'float32' }); // torch ran on float32
      const torchS = low.vector(`${c.name}.s`);
      expect(S.length).toBe(torchS.length);
      // The sketch is torch's own randn (same generator), so only float32 vs float64 rounding differs.
      expect(relFro(S, torchS)).toBeLessThan(1e-5);
      expect(relFro(reconstruct(U, S, transpose64(V)), low.vector(`${c.name}.usvt`))).toBeLessThan(1e-5);
      if (c.exact_rank !== null) expect(relFro(reconstruct(U, S, transpose64(V)), a.data)).toBeLessThan(1e-5);
    });
  }

  it('rejects a bad q or niter', () => {
    const a = matrix64(4, 3);
    expect(() => svdLowRank(a, { q: 0 })).toThrow(/q = 0 must be a positive integer/);
    expect(() => svdLowRank(a, { niter: -1 })).toThrow(/niter = -1/);
  });
});

await describeEachBackend('svdLowRank on tensors', () => {
  it('recovers an exact rank-8 matrix to 1e-5 with the same numbers as torch, leaking nothing', async () => {
    const c = cases.find((x) => x.name === 'exact_rank8_200x150')!;
    const a = low.get(`${c.name}.a`);
    const at = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const before = tf.memory().numTensors;
    const r = await svdLowRank(at, { q: c.q, niter: c.niter, seed: c.seed });
    expect(tf.memory().numTensors).toBe(before + 3);
    const [u, s, v] = await Promise.all([r.U.data(), r.S.data(), r.V.data()]);
    const U = matrix64(a.rows, c.q, u);
    const V = matrix64(a.cols, c.q, v);
    expect(relFro(reconstruct(U, Float64Array.from(s), transpose64(V)), a.data)).toBeLessThan(1e-5);
    expect(relFro(Float64Array.from(s), low.vector(`${c.name}.s`))).toBeLessThan(1e-5);
    tf.dispose([at, r.U, r.S, r.V]);
  });

  it('falls back to Householder when the sketch is rank-deficient (CholeskyQR cannot factor it)', async () => {
    const g = new Float64Array(60 * 3).map((_, i) => Math.sin(i * 1.7));
    const h = new Float64Array(3 * 50).map((_, i) => Math.cos(i * 0.9));
    const a = matmul64(matrix64(60, 3, g), matrix64(3, 50, h)); // exact rank 3, sketched with q = 6
    const at = tf.tensor2d(Float32Array.from(a.data), [60, 50]);
    const r = await svdLowRank(at, { q: 6, niter: 1, seed: 2 });
    const [u, s, v] = await Promise.all([r.U.data(), r.S.data(), r.V.data()]);
    expect(
      relFro(reconstruct(matrix64(60, 6, u), Float64Array.from(s), transpose64(matrix64(50, 6, v))), a.data),
    ).toBeLessThan(1e-5);
    tf.dispose([at, r.U, r.S, r.V]);
  });

  it('stays accurate when power iterations make the sketch ill-conditioned (condition ~1e5)', async () => {
    // singular values 1 … 1e-6: after two power iterations the sketch's condition number is ~1e5
    const battery = readFixture('lapack-battery.safetensors');
    const a = battery.get('cond_1e6_60x50.a');
    const a32 = matrix64(a.rows, a.cols, Float64Array.from(Float32Array.from(a.data)));
    const want = svdLowRank(a32, { q: 10, niter: 2, seed: 4, sketchDtype: 'float32' });
    const at = tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);
    const r = await svdLowRank(at, { q: 10, niter: 2, seed: 4 });
    const [u, s, v] = await Promise.all([r.U.data(), r.S.data(), r.V.data()]);
    const got = reconstruct(matrix64(a.rows, 10, u), Float64Array.from(s), transpose64(matrix64(a.cols, 10, v)));
    expect(relFro(got, reconstruct(want.U, want.S, transpose64(want.V)))).toBeLessThan(1e-5);
    expect(relFro(Float64Array.from(s), want.S)).toBeLessThan(1e-5);
    tf.dispose([at, r.U, r.S, r.V]);
  });
});

describe('svdFlip', () => {
  it('flips pairs so that the largest entry of each Vh row (or U column) is positive, keeping the product', () => {
    const U = matrix64([
      [1, -2],
      [-3, 1],
    ]);
    const Vh = matrix64([
      [-0.5, 0.2],
      [0.1, 0.9],
    ]);
    const byV = svdFlip(U, Vh, { uBasedDecision: false }); // row 0 of Vh flips, row 1 does not
    expect(Array.from(byV.Vh.data)).toEqual([0.5, -0.2, 0.1, 0.9]);
    expect(Array.from(byV.U.data)).toEqual([-1, -2, 3, 1]);
    const byU = svdFlip(U, Vh); // both columns of U flip (-3 and -2 are their largest entries)
    expect(Array.from(byU.U.data)).toEqual([-1, 2, 3, -1]);
    expect(Array.from(byU.Vh.data)).toEqual([0.5, -0.2, -0.1, -0.9]);
    const S = new Float64Array([2, 1]);
    expect(relFro(reconstruct(byV.U, S, byV.Vh), reconstruct(U, S, Vh))).toBe(0);
  });
});

const ipcaFixture = readFixture('peft-ipca.safetensors');
describe(`IncrementalPCA against PEFT ${ipcaFixture.metadata.peft}`, () => {
  const x = ipcaFixture.get('x');
  for (const label of ['exact', 'lowrank'] as const) {
    it(`${label}: every attribute after each of three batches`, () => {
      const ipca = new IncrementalPCA({
        nComponents: 6,
        ...(label === 'lowrank' ? { lowRank: true, lowRankSeed: 42 } : {}),
      });
      for (let i = 0; i < 3; i++) {
        ipca.partialFit(matrix64(30, x.cols, x.data.subarray(30 * i * x.cols, 30 * (i + 1) * x.cols)));
        const at = (attr: string) => ipcaFixture.vector(`${label}.${i}.${attr}`);
        // PEFT centres the first batch in float32; these agree to float32 rounding through an SVD.
        expect(relFro(ipca.components!.data, at('components_')), `components after batch ${i}`).toBeLessThan(1e-4);
        expect(relFro(ipca.singularValues!, at('singular_values_'))).toBeLessThan(1e-5);
        expect(relFro(ipca.explainedVariance!, at('explained_variance_'))).toBeLessThan(1e-5);
        expect(relFro(ipca.explainedVarianceRatio!, at('explained_variance_ratio_'))).toBeLessThan(1e-5);
        expect(relFro(ipca.mean!, at('mean_'))).toBeLessThan(1e-6);
        expect(relFro(ipca.var!, at('var_'))).toBeLessThan(1e-6);
        expect(Math.abs(ipca.noiseVariance - (at('noise_variance_')[0] as number))).toBeLessThan(
          1e-5 * Math.abs(at('noise_variance_')[0] as number),
        );
        expect(ipca.nSamplesSeen).toBe(30 * (i + 1));
      }
    });
  }

  it('refuses what PEFT refuses, with its wording', () => {
    expect(() => new IncrementalPCA({ nComponents: 30 }).partialFit(matrix64(40, 24))).toThrow(
      /nComponents=30 invalid for n_features=24/,
    );
    expect(() => new IncrementalPCA({ nComponents: 6 }).partialFit(matrix64(4, 24))).toThrow(
      /must be less or equal to the batch number of samples 4/,
    );
    expect(() => new IncrementalPCA({ lowRank: true })).toThrow(/nComponents must be specified/);
    expect(() => new IncrementalPCA({ nComponents: 6, lowRank: true, lowRankQ: 3 })).toThrow(
      /lowRankQ = 3 must be greater than or equal to nComponents = 6/,
    );
    const ipca = new IncrementalPCA({ nComponents: 2 });
    ipca.partialFit(
      matrix64(
        5,
        4,
        Array.from({ length: 20 }, (_, i) => Math.sin(i)),
      ),
    );
    expect(() => ipca.partialFit(matrix64(5, 3))).toThrow(/has 3 features but the first batch had 4/);
  });
});
