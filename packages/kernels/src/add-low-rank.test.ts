import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { addLowRank } from './add-low-rank';
import { linearLowRank } from './linear-low-rank';
import type { KernelOptions } from './options';
import { configureKernels } from './configure';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, programsRun, seq } from './kernels.test-util';

/** base + s·h·bᵀ in float64 on the host: the oracle for both paths. */
async function reference(base: tf.Tensor, h: tf.Tensor, b: tf.Tensor, s: number): Promise<Float64Array> {
  const [bv, hv, wv] = (await Promise.all([base.data(), h.data(), b.data()])) as Float32Array[];
  const [o, r] = b.shape as [number, number];
  const rows = base.size / o;
  const out = new Float64Array(base.size);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < o; j++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += (hv as Float32Array)[i * r + k]! * (wv as Float32Array)[j * r + k]!;
      out[i * o + j] = (bv as Float32Array)[i * o + j]! + s * acc;
    }
  return out;
}

/** x·wᵀ in float64 on the host, rounded to float32. */
async function hostProductT(x: tf.Tensor, w: tf.Tensor): Promise<tf.Tensor> {
  const [xv, wv] = (await Promise.all([x.data(), w.data()])) as Float32Array[];
  const [rows, k] = x.shape as [number, number];
  const o = w.shape[0] as number;
  const out = new Float32Array(rows * o);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < o; j++) {
      let acc = 0;
      for (let q = 0; q < k; q++) acc += (xv as Float32Array)[i * k + q]! * (wv as Float32Array)[j * k + q]!;
      out[i * o + j] = acc;
    }
  return tf.tensor(out, [rows, o]);
}

await describeEachBackend('addLowRank', (backend) => {
  failOnGpuErrors();
  // [leading axes, out, r]: rows a multiple of the 4 rows a thread computes and not; r of LoRA's sizes
  for (const [lead, o, r] of [
    [[2, 5], 12, 4],
    [[3, 7], 10, 3],
    [[33], 68, 16],
    [[1], 5, 2],
  ] as [number[], number, number][]) {
    it(`is base + s·h·bᵀ with the composite's gradients for base [${lead}, ${o}], r ${r}`, async () => {
      const base = seq([...lead, o], 211);
      const h = seq([...lead, r], 223);
      const b = seq([o, r], 227);
      const dy = seq([...lead, o], 229);
      const y = assertNoLeaks(() => addLowRank(base, h, b, 1.75));
      await expectClose(y, await reference(base, h, b, 1.75), 1e-6);
      const f = (x: tf.Tensor, hh: tf.Tensor, bb: tf.Tensor) => tf.sum(tf.mul(addLowRank(x, hh, bb, 1.75), dy));
      const g = assertNoLeaks(() => tf.grads(f)([base, h, b]));
      const ref = composite(() => tf.grads(f)([base, h, b]));
      for (let i = 0; i < 3; i++) await expectClose(g[i] as tf.Tensor, ref[i] as tf.Tensor, 1e-6);
      await expectFusedOnWebgpu(backend.name, () => tf.grads(f)([base, h, b]), 'LoraAddLowRank');
      tf.dispose([base, h, b, dy, y, ...g, ...ref]);
    });
  }

  it('is one dispatch forward on webgpu, and the composite with fusedLora off', async () => {
    if (backend.name !== 'webgpu') return;
    const base = seq([6, 8], 3);
    const h = seq([6, 2], 5);
    const b = seq([8, 2], 7);
    expect(programsRun(() => addLowRank(base, h, b, 2))).toEqual([expect.stringMatching(/^LoraAddLowRank/)]);
    configureKernels({ fusedLora: false });
    try {
      const keys = programsRun(() => addLowRank(base, h, b, 2));
      expect(keys.some((k) => k.startsWith('LoraAddLowRank'))).toBe(false);
    } finally {
      configureKernels({});
    }
    tf.dispose([base, h, b]);
  });
});

describe('addLowRank input checks', () => {
  it('names the three shapes', () => {
    const base = tf.zeros([2, 6]);
    const h = tf.zeros([2, 3]);
    const b = tf.zeros([5, 3]);
    expect(() => addLowRank(base, h, b, 1)).toThrow(
      /base \[2, 6\], h \[2, 3\] and b \[5, 3\] do not fit: base must be \[\.\.\., 5\]/,
    );
    expect(() => addLowRank(base, h, tf.zeros([6]), 1)).toThrow(
      /b must be lora_B's weight \[out, r\], got shape \[6\]/,
    );
    tf.dispose([base, h, b]);
  });
});

await describeEachBackend('linearLowRank', (backend) => {
  failOnGpuErrors();
  // [rows, in, out, r, matmul option]: the tiled program with the low-rank term (forced 64² tile: test
  // shapes are too small for 'tiled' to take), its edges (rows, in not multiples of the tile), and the
  // two-dispatch path (tfjs's matmul; out not a multiple of 4)
  for (const [rows, inF, o, r, matmul, features] of [
    [70, 36, 44, 4, 'tiled-64'],
    [33, 20, 128, 16, 'tiled-64'],
    [65, 37, 68, 3, 'tiled-64'],
    [12, 8, 20, 2, 'tfjs'],
    [12, 8, 18, 2, 'tiled-64'],
    // round 4's variations of the program (subgroup layout, two slabs, vec4 stores, 32-deep slabs)
    [70, 36, 44, 4, 'tiled-64', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }],
    [130, 40, 68, 3, 'tiled-128x64', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }],
    [65, 72, 68, 16, 'tiled-64', { matmulDepth: 32, matmulVec4Store: true }],
    // 'auto' depth: K = 2052 takes 32-deep slabs (a ragged last one)
    [40, 2052, 44, 4, 'tiled-64', { matmulDepth: 'auto' }],
    // split-K (2 workgroups, K = 1024 in 4 runs): the low-rank term in the first run only
    [70, 1024, 44, 4, 'tiled-64', { matmulSplitK: true, matmulVec4Store: true }],
  ] as [number, number, number, number, 'tiled-64' | 'tiled-128x64' | 'tfjs', Partial<KernelOptions>?][]) {
    it(`is x·wᵀ + s·h·bᵀ with the composite's gradients for x [${rows}, ${inF}], out ${o}, r ${r}, matmul ${matmul}${features ? ` ${Object.keys(features).join('+')}` : ''}`, async () => {
      const x = seq([rows, inF], 311);
      const w = seq([o, inF], 313);
      const h = seq([rows, r], 317);
      const b = seq([o, r], 331);
      const dy = seq([rows, o], 337);
      const f = (xx: tf.Tensor, ww: tf.Tensor, hh: tf.Tensor, bb: tf.Tensor) =>
        tf.sum(tf.mul(linearLowRank(xx, ww, hh, bb, 0.5), dy));
      // the oracles first: composite() puts every option back to its default; the base product in
      // float64 on the host (tfjs-webgpu's own program for this shape is wrong from K ≈ 2048 on
      // Mesa's software WebGPU)
      const base = await hostProductT(x, w);
      const ref = composite(() => tf.grads(f)([x, w, h, b]));
      configureKernels({ matmul, ...features });
      try {
        const y = assertNoLeaks(() => linearLowRank(x, w, h, b, 0.5));
        await expectClose(y, await reference(base, h, b, 0.5), 2e-6);
        const g = assertNoLeaks(() => tf.grads(f)([x, w, h, b]));
        for (let i = 0; i < 4; i++) await expectClose(g[i] as tf.Tensor, ref[i] as tf.Tensor, 2e-6);
        const keys = backend.name === 'webgpu' ? programsRun(() => linearLowRank(x, w, h, b, 0.5)) : [];
        if (backend.name === 'webgpu')
          expect(keys.some((k) => k.includes('_lowrank'))).toBe(matmul !== 'tfjs' && o % 4 === 0);
        if (backend.name === 'webgpu' && features?.matmulSplitK)
          expect(keys.some((k) => k.includes('_split4'))).toBe(true);
        if (backend.name === 'webgpu' && features?.matmulDepth === 'auto')
          expect(keys.some((k) => /^LoraMatmulTiled_64_64_32_.*_lowrank/.test(k))).toBe(true);
        if (backend.name === 'webgpu' && features?.matmulWarpLayout)
          expect(keys.some((k) => k.includes('_lowrank_warp'))).toBe(true);
        tf.dispose([x, w, h, b, dy, y, base, ...g, ...ref]);
      } finally {
        configureKernels({});
      }
    });
  }
});
