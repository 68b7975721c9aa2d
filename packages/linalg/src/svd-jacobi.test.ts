import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type Matrix64, matrix64, svd, transpose64 } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, reconstruct, relFro } from './fixtures.test-util';
import { withSpectrum } from './large-matrices.test-util';
import { type JacobiSvdOptions, jacobiStats, svdJacobi } from './svd-jacobi';

const gaussian = (m: number, n: number, seed: number) =>
  matrix64(m, n, Float64Array.from(new Generator(seed).fillNormal(new Float32Array(m * n))));
const f32 = (a: Matrix64) => tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);

/**
 * The Jacobi SVD of `a` against the float64 path's: S within 1e-5·σ₁ and descending, U·S·Vh = A and
 * orthonormal U and V within 1e-5 (as svd's float32 contract), only U, S, Vh left behind.
 */
async function expectJacobi(a: Matrix64, label: string, options: JacobiSvdOptions = {}) {
  const exact = svd(a).S;
  const t = f32(a);
  const before = tf.memory().numTensors;
  const stages = new Set<string>();
  const r = await svdJacobi(t, {
    ...options,
    // a stage counts once it reports done: CholeskyQR2 reports 'qr' 0 of 1 before it starts, and a refused one no more
    onProgress: (p) => {
      if (p.done === p.total) stages.add(p.stage);
    },
  });
  expect(tf.memory().numTensors, `${label}: only U, S, Vh are new`).toBe(before + 3);
  const k = Math.min(a.rows, a.cols);
  expect([r.U.shape, r.S.shape, r.Vh.shape], label).toEqual([[a.rows, k], [k], [k, a.cols]]);
  const U = matrix64(a.rows, k, await r.U.data());
  const Vh = matrix64(k, a.cols, await r.Vh.data());
  const S = Float64Array.from(await r.S.data());
  tf.dispose([t, r.U, r.S, r.Vh]);
  const s1 = exact[0] as number;
  for (let i = 0; i < k; i++) {
    expect(Math.abs((S[i] as number) - (exact[i] as number)), `${label} σ${i}`).toBeLessThanOrEqual(1e-5 * s1);
    if (i > 0) expect(S[i], `${label}: descending`).toBeLessThanOrEqual(S[i - 1] as number);
  }
  expect(orthogonalityError(U), `${label}: UᵀU = I`).toBeLessThan(1e-5);
  expect(orthogonalityError(transpose64(Vh)), `${label}: VᵀV = I`).toBeLessThan(1e-5);
  expect(relFro(reconstruct(U, S, Vh), a.data), `${label}: U·S·Vh = A`).toBeLessThan(1e-5);
  return stages;
}

await describeEachBackend('svd by blocked one-sided Jacobi (WGSL)', (backend) => {
  const onWebgpu = backend.name === 'webgpu';

  it.runIf(onWebgpu)(
    'decomposes square, tall, wide and padded matrices with blocks of 16 and 32',
    async () => {
      await expectJacobi(gaussian(64, 64, 1), 'gauss 64², b 32', { block: 32 });
      await expectJacobi(gaussian(64, 64, 1), 'gauss 64², b 16', { block: 16 });
      await expectJacobi(gaussian(96, 40, 2), 'gauss 96×40 (padded to 64 columns)', { block: 16 });
      await expectJacobi(gaussian(40, 96, 3), 'gauss 40×96 (decomposed transposed)', { block: 16 });
      // 11 steps a sweep: V is the product of some hundred J, whose rounding must not add up
      await expectJacobi(gaussian(192, 192, 9), 'gauss 192², b 16', { block: 16 });
      await expectJacobi(gaussian(130, 130, 4), 'gauss 130² (padded to 192)', { block: 32 });
      // sweeps stop when converged, and each is three programs a step
      expect(jacobiStats.off).toBeLessThanOrEqual(8 * Math.sqrt(130) * 2 ** -25);
      expect(jacobiStats.dispatches).toBe(jacobiStats.sweeps * 3 * (192 / 32 - 1));
      expect(jacobiStats.sweeps).toBeLessThan(15);
    },
    120_000,
  );

  it.runIf(onWebgpu)(
    'keeps its accuracy on graded and rank-deficient spectra, and completes U',
    async () => {
      const range = (n: number) => Array.from({ length: n }, (_, i) => i);
      await expectJacobi(
        withSpectrum(
          96,
          96,
          range(96).map((i) => 10 ** ((-10 * i) / 95)),
        ),
        'graded 1 … 1e-10',
        { block: 16 },
      );
      await expectJacobi(
        withSpectrum(
          80,
          70,
          range(12).map((i) => 3 - i / 6),
        ),
        'rank 12',
        { block: 16 },
      );
      // exact zero columns: σ = 0, and U's columns for them orthonormal-completed
      const z = gaussian(70, 50, 5);
      for (let i = 0; i < 70; i++) for (const c of [3, 17, 18]) z.data[i * 50 + c] = 0;
      await expectJacobi(z, 'three zero columns', { block: 16 });
      const zero = await svdJacobi(tf.zeros([40, 24]) as tf.Tensor2D, { block: 16 });
      expect(Array.from(await zero.S.data())).toEqual(new Array(24).fill(0));
      expect(orthogonalityError(matrix64(40, 24, await zero.U.data()))).toBeLessThan(1e-6);
      tf.dispose([zero.U, zero.S, zero.Vh]);
    },
    120_000,
  );

  it.runIf(onWebgpu)(
    'takes a QR first when asked, and scales huge and tiny entries',
    async () => {
      // by default from m ≥ 2n: CholeskyQR2 first
      expect(await expectJacobi(gaussian(150, 40, 6), 'tall, CholeskyQR2 first', { block: 16 })).toContain('qr');
      expect(await expectJacobi(gaussian(40, 150, 6), 'wide, CholeskyQR2 first', { block: 16 })).toContain('qr');
      // below the ratio, or with the ratio at Infinity: no QR
      expect(await expectJacobi(gaussian(150, 80, 6), 'tall, under 2', { block: 16 })).not.toContain('qr');
      expect(
        await expectJacobi(gaussian(150, 40, 6), 'tall, no QR', { block: 16, qrFirstRatio: Number.POSITIVE_INFINITY }),
      ).not.toContain('qr');
      // the blocked Householder QR when asked
      expect(
        await expectJacobi(gaussian(150, 40, 6), 'tall, Householder QR first', {
          block: 16,
          qrFirstRatio: 1.6,
          qrMethod: 'householder',
        }),
      ).toContain('qr');
      // too ill-conditioned for CholeskyQR2 in float32 (κ 10⁶): refused, the sweeps on the tall matrix itself
      const graded = withSpectrum(
        150,
        40,
        Array.from({ length: 40 }, (_, i) => 10 ** (-6 * (i / 39))),
      );
      expect(await expectJacobi(graded, 'tall, graded: CholeskyQR2 refused', { block: 16 })).not.toContain('qr');
      const big = gaussian(48, 48, 7);
      await expectJacobi(
        matrix64(
          48,
          48,
          big.data.map((v) => v * 1e25),
        ),
        'entries near 1e25',
        { block: 16 },
      );
      await expectJacobi(
        matrix64(
          48,
          48,
          big.data.map((v) => v * 1e-25),
        ),
        'entries near 1e-25',
        { block: 16 },
      );
    },
    120_000,
  );

  it.runIf(onWebgpu)(
    'fused (one program a step) meets the same contract: Gaussian, graded, clustered, rank-deficient, tall, wide, b 32',
    async () => {
      const range = (n: number) => Array.from({ length: n }, (_, i) => i);
      const variants: [string, JacobiSvdOptions][] = [
        ['fused', {}],
        ['fused, 1 inner sweep', { innerSweeps: 1 }],
        ['fused, 1 inner sweep, merged rounds, unchecked', { innerSweeps: 1, mergedRounds: true, checkBelow: 0 }],
      ];
      for (const [tag, variant] of variants) {
        const o: JacobiSvdOptions = { fused: true, block: 16, ...variant };
        await expectJacobi(gaussian(192, 192, 9), `gauss 192², ${tag}`, o);
        // one program a step, and the stats rows below V are read back as the split path's
        expect(jacobiStats.dispatches).toBe(jacobiStats.sweeps * (192 / 16 - 1));
        expect(jacobiStats.off).toBeLessThanOrEqual(8 * Math.sqrt(192) * 2 ** -25);
        expect(jacobiStats.serialInnerSweeps).toBeGreaterThan(0);
        expect(jacobiStats.serialInnerSweeps).toBeLessThanOrEqual(jacobiStats.sweeps * 11 * (o.innerSweeps ?? 2));
        await expectJacobi(
          withSpectrum(
            96,
            96,
            range(96).map((i) => 10 ** ((-10 * i) / 95)),
          ),
          `graded 1 … 1e-10, ${tag}`,
          o,
        );
        await expectJacobi(
          withSpectrum(128, 128, [
            ...range(24).map(() => 3),
            ...range(40).map((i) => 2 + 1e-6 * i),
            ...range(24).map(() => 1),
            ...range(40).map((i) => 0.5 ** i),
          ]),
          `clustered 128², ${tag}`,
          o,
        );
        await expectJacobi(
          withSpectrum(
            80,
            70,
            range(12).map((i) => 3 - i / 6),
          ),
          `rank 12, ${tag}`,
          o,
        );
        const z = gaussian(70, 50, 5);
        for (let i = 0; i < 70; i++) for (const c of [3, 17, 18]) z.data[i * 50 + c] = 0;
        await expectJacobi(z, `three zero columns, ${tag}`, o);
        await expectJacobi(gaussian(150, 40, 6), `tall 150×40, ${tag}`, o);
        await expectJacobi(gaussian(40, 96, 3), `wide 40×96, ${tag}`, o);
        // fewer rows than the pair's 32 columns: the Gram tile's rows past m are zero
        await expectJacobi(gaussian(20, 20, 12), `20² (padded to 32), ${tag}`, o);
      }
      await expectJacobi(gaussian(130, 130, 4), 'gauss 130² (padded to 192), fused, b 32', { fused: true, block: 32 });
      expect(jacobiStats.dispatches).toBe(jacobiStats.sweeps * (192 / 32 - 1));
    },
    // 33–62 s here alone on Mesa's software WebGPU; over 300 s in a clean-clone CI run at load 13–16
    900_000,
  );

  it.runIf(onWebgpu)(
    'innerExit, singleSweepAbove, mergedRounds and checkBelow change how many sweeps run, not the contract',
    async () => {
      const a = gaussian(128, 128, 10);
      const stats = async (label: string, o: JacobiSvdOptions) => {
        await expectJacobi(a, label, { block: 16, ...o });
        return { ...jacobiStats };
      };
      const old = await stats('inner sweeps until one rotates nothing', { innerExit: false, checkBelow: 0 });
      const exit = await stats('inner sweeps until G is diagonal', { innerExit: true, checkBelow: 0 });
      // the same rotations: the same outer sweeps, and never more inner ones
      expect(exit.sweeps).toBe(old.sweeps);
      expect(exit.innerSweeps).toBeLessThan(old.innerSweeps);
      expect(exit.serialInnerSweeps).toBeLessThanOrEqual(old.serialInnerSweeps);
      // every pair above a cosine of 0 (all that rotate) takes one sweep of the three allowed
      const one = await stats('single sweeps', { innerSweeps: 3, singleSweepAbove: 0, checkBelow: 0 });
      expect(one.serialInnerSweeps).toBeLessThanOrEqual(one.sweeps * 7);
      const three = await stats('three inner sweeps', { innerSweeps: 3, checkBelow: 0 });
      expect(three.serialInnerSweeps).toBeGreaterThan(one.serialInnerSweeps);
      // one barrier a round, G in two copies: the same rotations, so the same counts
      const merged = await stats('merged rounds', { mergedRounds: true, innerExit: true, checkBelow: 0 });
      expect([merged.sweeps, merged.innerSweeps]).toEqual([exit.sweeps, exit.innerSweeps]);
      // a check of all cosines at once after a sweep that met them below 1e-2: one sweep fewer here,
      // as orthogonal
      const checked = await stats('checked', { innerExit: true, checkBelow: 1e-2 });
      // the defaults: the earlier rules
      const plain = await stats('defaults', {});
      expect([plain.sweeps, plain.innerSweeps]).toEqual([old.sweeps, old.innerSweeps]);
      expect(checked.sweeps).toBe(exit.sweeps - 1);
      expect(checked.checks.at(-1)).toBeLessThanOrEqual(2 * Math.sqrt(128) * 2 ** -25);
      expect(checked.off).toBe(checked.checks.at(-1));
      const t = f32(a);
      const before = tf.memory().numTensors;
      await expect(svdJacobi(t, { innerSweeps: 0 })).rejects.toThrow(/innerSweeps 0 is not a positive integer/);
      await expect(svdJacobi(t, { block: 32, mergedRounds: true })).rejects.toThrow(
        expect.objectContaining({ name: 'LinalgError', message: expect.stringMatching(/mergedRounds needs block 16/) }),
      );
      expect(tf.memory().numTensors).toBe(before);
      t.dispose();
    },
    120_000,
  );

  it.runIf(onWebgpu)('fused: one progress report a sweep, and an abort in each stage leaves no tensor', async () => {
    const t = f32(gaussian(96, 96, 8));
    const before = tf.memory().numTensors;
    for (const stage of ['jacobi', 'vectors']) {
      const controller = new AbortController();
      const run = svdJacobi(t, {
        fused: true,
        signal: controller.signal,
        onProgress: (p) => {
          if (p.stage === stage) controller.abort(new Error(`stop in ${stage}`));
        },
      });
      await expect(run).rejects.toThrow(`stop in ${stage}`);
      expect(tf.memory().numTensors, stage).toBe(before);
    }
    const stages: string[] = [];
    const r = await svdJacobi(t, { fused: true, onProgress: (p) => stages.push(p.stage) });
    tf.dispose([r.U, r.S, r.Vh]);
    expect(stages.filter((s) => s === 'jacobi').length).toBe(jacobiStats.sweeps);
    expect(tf.memory().numTensors).toBe(before);
    t.dispose();
  });

  it.runIf(onWebgpu)('refuses a block size it has no program for, naming it, and leaves nothing', async () => {
    const t = f32(gaussian(64, 64, 1));
    const before = tf.memory().numTensors;
    await expect(svdJacobi(t, { block: 24 })).rejects.toThrow(
      expect.objectContaining({
        name: 'LinalgError',
        message: expect.stringMatching(/Jacobi block 24 is not 16 or 32/),
      }),
    );
    expect(tf.memory().numTensors).toBe(before);
    t.dispose();
  });

  it.runIf(onWebgpu)(
    'is what svd runs on webgpu, one progress report a sweep (aborts in each stage: svd-blocked.test.ts)',
    async () => {
      const t = f32(gaussian(130, 130, 8));
      const stages: string[] = [];
      const r = await svd(t, { method: 'backend', onProgress: (p) => stages.push(p.stage) });
      tf.dispose([r.U, r.S, r.Vh]);
      expect(stages.filter((s) => s === 'jacobi').length).toBe(jacobiStats.sweeps);
      expect(stages.at(-1)).toBe('vectors');
      t.dispose();
    },
    120_000,
  );
});
