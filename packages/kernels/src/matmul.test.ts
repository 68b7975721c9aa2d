import * as tf from '@tensorflow/tfjs-core';
import { afterAll, describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { configureKernels } from './configure';
import { expectClose, failOnGpuErrors, programsRun, seq } from './kernels.test-util';
import { TILES, chooseTile } from './matmul';
import type { KernelOptions } from './options';

/** float64 op(A)·op(B) over a (broadcast) batch. */
function reference(a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean, av: Float32Array, bv: Float32Array) {
  const [ba, ra, ca] = a.shape.length === 2 ? [1, ...a.shape] : a.shape;
  const [bb, rb, cb] = b.shape.length === 2 ? [1, ...b.shape] : b.shape;
  const [m, k] = ta ? [ca, ra] : [ra, ca];
  const n = tb ? (rb as number) : (cb as number);
  const batch = Math.max(ba as number, bb as number);
  const out = new Float64Array(batch * (m as number) * n);
  for (let p = 0; p < batch; p++)
    for (let i = 0; i < (m as number); i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let q = 0; q < (k as number); q++) {
          const x = av[((ba === 1 ? 0 : p) * (ra as number) + (ta ? q : i)) * (ca as number) + (ta ? i : q)] as number;
          const y = bv[((bb === 1 ? 0 : p) * (rb as number) + (tb ? j : q)) * (cb as number) + (tb ? q : j)] as number;
          s += x * y;
        }
        out[(p * (m as number) + i) * n + j] = s;
      }
  return out;
}

await describeEachBackend('tiled matmul', (backend) => {
  failOnGpuErrors();
  afterAll(() => {
    configureKernels({});
  });
  // shapes with edges in every dimension: vec4 reads where the contiguous axes are multiples of 4
  // (the fast path, with the next slab prefetched), scalar reads elsewhere
  const cases: [number[], number[], boolean, boolean][] = [
    [[68, 36], [36, 44], false, false],
    [[36, 68], [44, 36], true, true],
    [[70, 37], [45, 37], false, true], // scalar
    [[37, 70], [37, 45], true, false], // scalar
    [[2, 40, 64], [64, 36], false, false], // a broadcast B
    [[1, 40, 20], [3, 36, 20], false, true], // a broadcast A
  ];
  // a 128² tile compiles slowly on a software adapter: one case each path
  for (const tile of ['tiled-64', 'tiled-128'] as const)
    for (const [sa, sb, ta, tb] of tile === 'tiled-64' ? cases : ([cases[0], cases[2]] as typeof cases))
      it.runIf(backend.name === 'webgpu')(`${tile}: [${sa}]${ta ? 'ᵀ' : ''} · [${sb}]${tb ? 'ᵀ' : ''}`, async () => {
        configureKernels({ matmul: tile });
        const a = seq(sa, 83);
        const b = seq(sb, 89);
        const y = assertNoLeaks(() => tf.matMul(a, b, ta, tb));
        const programs = programsRun(() => tf.matMul(a, b, ta, tb));
        const [m, k] = ta ? [sa.at(-1), sa.at(-2)] : [sa.at(-2), sa.at(-1)];
        const n = tb ? sb.at(-2) : sb.at(-1);
        const aligned =
          (ta ? (m as number) : (k as number)) % 4 === 0 && (tb ? (k as number) : (n as number)) % 4 === 0;
        expect(programs).toEqual([
          expect.stringMatching(new RegExp(`^LoraMatmulTiled_${tile.slice(6)}_.*_${aligned ? 'vec4' : 'scalar'}(_|$)`)),
        ]);
        await expectClose(
          y,
          reference(a, b, ta, tb, (await a.data()) as Float32Array, (await b.data()) as Float32Array),
          1e-6,
        );
        tf.dispose([a, b, y]);
      });

  // the program's variations (subgroup layout, two slabs, vec4 stores) and the medium tiles: the same
  // float64 reference; every variation's shader key is checked so that a silent fallback fails
  type Case = [number[], number[], boolean, boolean];
  const c = (i: number) => cases[i] as Case;
  // the fourth entry, where given, is the slab depth the program must have (for `matmulDepth: 'auto'`)
  const variations: [string, Partial<KernelOptions>, Case, number?][] = [
    ['tiled-64', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }, c(0)],
    ['tiled-64', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }, c(1)],
    ['tiled-64', { matmulDoubleBuffer: true }, c(4)],
    ['tiled-64', { matmulVec4Store: true }, [[70, 36], [36, 44], false, false]], // n % 4 = 0, ragged rows
    ['tiled-64', { matmulVec4Store: true, matmulWarpLayout: true }, c(2)], // scalar path, n % 4 ≠ 0
    ['tiled-128x64', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }, c(5)],
    ['tiled-64x128', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }, c(1)],
    ['tiled-128', { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true }, c(0)],
    // 32-deep slabs: K = 64 is two slabs, K = 36 a ragged one
    ['tiled-64', { matmulDepth: 32, matmulWarpLayout: true, matmulDoubleBuffer: true }, c(4)],
    ['tiled-128x64', { matmulDepth: 32, matmulVec4Store: true }, c(0)],
    // 'auto': 32-deep from K = 2048 on (a ragged last slab at 2052), 16-deep below
    ['tiled-64', { matmulDepth: 'auto' }, [[70, 2052], [44, 2052], false, true], 32],
    ['tiled-64', { matmulDepth: 'auto' }, [[2052, 40], [2052, 36], true, false], 32],
    ['tiled-64', { matmulDepth: 'auto' }, [[70, 2044], [2044, 44], false, false], 16],
    // split-K: a 2-workgroup output over K = 1024 in 4 runs (vec4 path, two slabs) and K = 1030 (scalar path)
    [
      'tiled-64',
      { matmulSplitK: true, matmulDoubleBuffer: true, matmulVec4Store: true },
      [[70, 1024], [44, 1024], false, true],
    ],
    ['tiled-64', { matmulSplitK: true }, [[2, 40, 1030], [1030, 36], false, false]],
  ];
  for (const [tile, features, [sa, sb, ta, tb], wantDepth] of variations)
    it.runIf(backend.name === 'webgpu')(
      `${tile} ${Object.keys(features).join('+')}: [${sa}]${ta ? 'ᵀ' : ''} · [${sb}]${tb ? 'ᵀ' : ''}`,
      async () => {
        // what is in force: the features asked for, the defaults for the rest
        const o = configureKernels({ matmul: tile as KernelOptions['matmul'], ...features });
        const a = seq(sa, 83);
        const b = seq(sb, 89);
        const y = assertNoLeaks(() => tf.matMul(a, b, ta, tb));
        const [program] = programsRun(() => tf.matMul(a, b, ta, tb));
        // the partial outputs of a split product are freed with it
        if (features.matmulSplitK) assertNoLeaks(() => tf.dispose(tf.matMul(a, b, ta, tb)));
        const [m, k] = ta ? [sa.at(-1), sa.at(-2)] : [sa.at(-2), sa.at(-1)];
        const n = tb ? (sb.at(-2) as number) : (sb.at(-1) as number);
        const vec = (ta ? (m as number) : (k as number)) % 4 === 0 && (tb ? (k as number) : n) % 4 === 0;
        const t = TILES[tile.slice(6) as keyof typeof TILES];
        // the other cases have K < 2048: 'auto' (the default) is 16 there
        const depth = wantDepth ?? (o.matmulDepth === 'auto' ? 16 : o.matmulDepth);
        expect(program).toMatch(new RegExp(`^LoraMatmulTiled_${t.bm}_${t.bn}_${depth}_`));
        expect(program?.includes('_warp')).toBe(o.matmulWarpLayout);
        // two slabs only on the vec4 path, and where workgroup memory holds them
        const storage = (tf.backend() as unknown as { device: { limits: Record<string, number> } }).device.limits
          .maxComputeWorkgroupStorageSize as number;
        const fits = 2 * 16 * depth * (t.bm / 4 + t.bn / 4) <= storage;
        expect(program?.includes('_double')).toBe(o.matmulDoubleBuffer && vec && fits);
        expect(program?.includes('_v4out')).toBe(o.matmulVec4Store && n % 4 === 0);
        expect(program?.includes('_split4')).toBe(o.matmulSplitK);
        if (features.matmulSplitK)
          expect(programsRun(() => tf.matMul(a, b, ta, tb))[1]).toMatch(/^LoraMatmulSplitSum_4/);
        // float32 sums' error grows with K: 1.5e-6 at K ≈ 2050
        await expectClose(
          y,
          reference(a, b, ta, tb, (await a.data()) as Float32Array, (await b.data()) as Float32Array),
          (k as number) > 1024 ? 3e-6 : 1e-6,
        );
        tf.dispose([a, b, y]);
      },
    );

  // thin tiles with split-K ('tiled' chooses them): LoRA's x·Aᵀ, dy·B, dyᵀ·h and dhᵀ·x shapes at r 16
  const thin: [string, Case][] = [
    ['64_16', [[300, 512], [16, 512], false, true]],
    ['64_16', [[300, 512], [512, 16], false, false]],
    ['64_16', [[512, 300], [512, 16], true, false]],
    ['16_64', [[512, 16], [512, 300], true, false]],
  ];
  for (const [tile, [sa, sb, ta, tb]] of thin)
    it.runIf(backend.name === 'webgpu')(
      `thin ${tile}, K split: [${sa}]${ta ? 'ᵀ' : ''} · [${sb}]${tb ? 'ᵀ' : ''}`,
      async () => {
        configureKernels({
          matmul: 'tiled',
          thinTiles: true,
          matmulSplitK: true,
          matmulVec4Store: true,
          thinRows: false,
        });
        const a = seq(sa, 83);
        const b = seq(sb, 89);
        const y = assertNoLeaks(() => tf.matMul(a, b, ta, tb));
        const programs = programsRun(() => tf.matMul(a, b, ta, tb));
        // 5 workgroups of the thin tile, K = 512: two runs of 256
        expect(programs).toEqual([
          expect.stringMatching(new RegExp(`^LoraMatmulTiled_${tile}_16_4_4_.*_split2$`)),
          expect.stringMatching(/^LoraMatmulSplitSum_2/),
        ]);
        await expectClose(
          y,
          reference(a, b, ta, tb, (await a.data()) as Float32Array, (await b.data()) as Float32Array),
          1e-6,
        );
        configureKernels({ matmul: 'tiled', matmulSplitK: true });
        expect(programsRun(() => tf.matMul(a, b, ta, tb)).some((k) => k.startsWith('LoraMatmulTiled'))).toBe(false);
        tf.dispose([a, b, y]);
      },
    );

  // the thin-rows program (x·Aᵀ at r 16, 3, 64; batched rows; ragged row counts)
  const thinRows: Case[] = [
    [[300, 512], [16, 512], false, true],
    [[2, 130, 260], [3, 260], false, true],
    [[257, 256], [64, 256], false, true],
  ];
  for (const [sa, sb, ta, tb] of thinRows)
    it.runIf(backend.name === 'webgpu')(`thin rows: [${sa}] · [${sb}]ᵀ`, async () => {
      configureKernels({ matmul: 'tiled', thinRows: true });
      const a = seq(sa, 83);
      const b = seq(sb, 89);
      const y = assertNoLeaks(() => tf.matMul(a, b, ta, tb));
      expect(programsRun(() => tf.matMul(a, b, ta, tb))).toEqual([`LoraMatmulThinRows_${sb[0]}`]);
      await expectClose(
        y,
        reference(a, b, ta, tb, (await a.data()) as Float32Array, (await b.data()) as Float32Array),
        1e-6,
      );
      tf.dispose([a, b, y]);
    });

  it.runIf(backend.name === 'webgpu')('gives tfjs back what it does not take, and trains through matMul', async () => {
    configureKernels({ matmul: 'tiled' });
    const a = seq([512, 96], 97);
    const w = tf.variable(seq([256, 96], 101));
    const f = () => tf.sum(tf.square(tf.matMul(a, w, false, true))) as tf.Scalar;
    const { value, grads } = tf.variableGrads(f, [w]);
    configureKernels({ matmul: 'tfjs' });
    const ref = tf.variableGrads(f, [w]);
    await expectClose(value, ref.value, 1e-6);
    await expectClose(grads[w.name] as tf.Tensor, ref.grads[w.name] as tf.Tensor, 1e-5);
    // a thin product (LoRA's x·Aᵀ with r = 4) stays on tfjs's programs
    const thin = seq([4, 96], 103);
    configureKernels({ matmul: 'tiled' });
    expect(programsRun(() => tf.matMul(a, thin, false, true)).some((k) => k.startsWith('LoraMatmul'))).toBe(false);
    expect(programsRun(() => tf.matMul(a, w, false, true)).some((k) => k.startsWith('LoraMatmulTiled_64'))).toBe(true);
    await expectClose(
      tf.matMul(a, thin, false, true),
      reference(a, thin, false, true, (await a.data()) as Float32Array, (await thin.data()) as Float32Array),
      1e-6,
    );
    tf.dispose([a, w, value, thin, ref.value, ...Object.values(grads), ...Object.values(ref.grads)]);
  });
});

describe('chooseTile', () => {
  it('takes large outputs with 128² tiles, medium with 64², leaves thin ones to tfjs', () => {
    expect(chooseTile('tiled', 1, 2048, 2816, 1024)?.bm).toBe(128);
    expect(chooseTile('tiled', 1, 512, 512, 64)?.bm).toBe(64);
    expect(chooseTile('tiled', 1, 2048, 16, 1024)).toBeNull();
    expect(chooseTile('tfjs', 1, 2048, 2048, 2048)).toBeNull();
  });
  it('gives a 128-workgroup product 64² tiles when largeTileGroups asks for more', () => {
    // q/o of the 123M model: 16 × 8 workgroups of 128²
    expect(chooseTile('tiled', 1, 2048, 1024, 1024)?.bm).toBe(128);
    expect(chooseTile('tiled', 1, 2048, 1024, 1024, 256)?.bm).toBe(64);
    expect(chooseTile('tiled', 1, 2048, 2816, 1024, 256)?.bm).toBe(128);
    expect(() => configureKernels({ largeTileGroups: 0 })).toThrow(/largeTileGroups must be a positive integer, got 0/);
  });
  it('with a medium tile: q/o and down get 128×64, p·v (64 wide) is not overhung by a 128² tile', () => {
    // the 123M model at 4 × 512 tokens, largeTileGroups 256
    const pick = (b: number, m: number, n: number, k: number) => {
      const t = chooseTile('tiled', b, m, n, k, 256, '128x64');
      return t ? `${t.bm}x${t.bn}` : null;
    };
    expect(pick(1, 2048, 1024, 1024)).toBe('128x64'); // q/o: 128 workgroups of 128²
    // with split-K, k/v keeps the 128×64 tile (64 workgroups, K split in two)
    expect(chooseTile('tiled', 1, 2048, 256, 1024, 256, '128x64', true)?.bn).toBe(64);
    expect(chooseTile('tiled', 1, 2048, 256, 1024, 256, '128x64', true)?.bm).toBe(128);
    expect(pick(1, 2048, 1024, 2816)).toBe('128x64'); // down
    expect(pick(1, 2048, 2816, 1024)).toBe('128x128'); // gate/up: 352
    expect(pick(1, 2048, 256, 1024)).toBe('64x64'); // k/v: 64 of 128×64
    expect(pick(16, 2048, 64, 512)).toBe('128x64'); // p·v
    expect(pick(16, 2048, 512, 64)).toBe('128x128'); // q·kᵀ
    expect(chooseTile('tiled', 1, 2048, 1024, 1024, 256)?.bm).toBe(64); // without one, as before
  });
  it('rejects an unknown program by name', () => {
    expect(() => configureKernels({ matmul: 'fast' as 'tfjs' })).toThrow(
      /matmul must be one of tfjs, tiled, tiled-64, tiled-128, tiled-128x64, tiled-64x128; got "fast"/,
    );
    expect(() => configureKernels({ mediumTile: '96' as 'none' })).toThrow(
      /mediumTile must be one of none, 128x64, 64x128; got "96"/,
    );
    expect(() => configureKernels({ matmulDepth: 8 as 16 })).toThrow(/matmulDepth must be 16, 32 or 'auto', got 8/);
  });
});
