import * as tf from '@tensorflow/tfjs-core';
import { type KernelOptions, optionsRef } from './options';
import {
  type UniformValue,
  type WebGPUBackendLike,
  type WebGPUProgramLike,
  elementwiseProgram,
  flat,
  sizeOf,
} from './webgpu-program';

/** A register-blocked tile: a BM×BN block of the output per workgroup, TM×TN per thread, K in steps of BK. */
export interface MatmulTile {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
}

/** k steps unrolled in the inner loop: enough for the GPU, small enough for shader compilers (llvmpipe on CI). */
const UNROLL = 4;

export const TILES: Record<'64' | '128' | '128x64' | '64x128' | '64x16' | '16x64', MatmulTile> = {
  '64': { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  '128': { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
  // twice the workgroups of a 128² tile, the same 8-row (8-column) register blocks along the long side
  '128x64': { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 },
  '64x128': { bm: 64, bn: 128, bk: 16, tm: 4, tn: 8 },
  // thin outputs (LoRA's rank-wide products): 64 threads, 4 × 4 each, K split over workgroups
  '64x16': { bm: 64, bn: 16, bk: 16, tm: 4, tn: 4 },
  '16x64': { bm: 16, bn: 64, bk: 16, tm: 4, tn: 4 },
};

/**
 * Variations of the tiled program (each gives the same sums in the same order, so the same results):
 * `warp` lays each 32-thread subgroup over 8 columns × 4 rows of register blocks instead of one
 * 16 × 2 strip, so that a k step reads fewer distinct workgroup-memory vec4s per subgroup; `double`
 * keeps two slabs in workgroup memory, one multiplied while the next is stored (one barrier per slab
 * instead of two); `vec4Store` writes the output as vec4s where N is a multiple of 4; `depth`, when
 * set, replaces the tile's slab depth BK (16 or 32: fewer barriers per K, more workgroup memory).
 */
export interface MatmulFeatures {
  warp: boolean;
  double: boolean;
  vec4Store: boolean;
  depth?: number;
  /** K split over this many workgroups per output tile (their partial outputs then summed): 1 = none. */
  splitK?: number;
}

export const NO_FEATURES: Readonly<MatmulFeatures> = { warp: false, double: false, vec4Store: false };

/**
 * out[b] = op(A[b])·op(B[b]) for A [batchA, M, K] (or [batchA, K, M] with transposeA) and B
 * [batchB, K, N] (or [batchB, N, K] with transposeB), a batch of 1 broadcast. Each workgroup stages
 * a BK-deep slab of A and B in workgroup memory (laid out k-major, whatever the operand's layout:
 * the transpose is folded into the load) and each thread accumulates TM×TN outputs in registers,
 * its rows and columns strided by the workgroup's width so that workgroup-memory reads are
 * consecutive vec4s. When the operands' contiguous axes are multiples of 4 (`vec4A`, `vec4B`), the
 * slabs are read as vec4s and the next slab is fetched into registers while the current one is
 * multiplied; the k loop inside a slab is unrolled.
 */
export function tiledMatmulProgram(
  outShape: [number, number, number],
  transposeA: boolean,
  transposeB: boolean,
  tile: MatmulTile,
  workgroupStorage = 16384,
  vec4A = false,
  vec4B = false,
  lowRank = false,
  features: Readonly<MatmulFeatures> = NO_FEATURES,
): WebGPUProgramLike {
  const { bm, bn, tm, tn } = tile;
  const bk = features.depth ?? tile.bk;
  const wgx = bn / tn;
  const wgy = bm / tm;
  const threads = wgx * wgy;
  const warp = features.warp && wgx % 8 === 0 && wgy % 4 === 0;
  // An operand read along k (A plain, B transposed) is stored one k-row per thread of a warp: rows
  // one vec4 longer than the tile put those stores in different memory banks, where there is room.
  const wantPadA = transposeA ? 0 : 1;
  const wantPadB = transposeB ? 1 : 0;
  const bytes = (pa: number, pb: number) => 16 * bk * (bm / 4 + pa + bn / 4 + pb);
  const vecPath = vec4A && vec4B;
  // two slabs (vec4 path only) where they fit, then padding where it still fits
  const double = features.double && vecPath && 2 * bytes(0, 0) <= workgroupStorage;
  const slabs = double ? 2 : 1;
  const pad = slabs * bytes(wantPadA, wantPadB) <= workgroupStorage;
  const bm4 = bm / 4 + (pad ? wantPadA : 0);
  const bn4 = bn / 4 + (pad ? wantPadB : 0);
  const tm4 = tm / 4;
  const tn4 = tn / 4;
  const [batch, m, n] = outShape;
  const vec4Store = features.vec4Store && n % 4 === 0;
  const splits = features.splitK ?? 1;

  // scalar staging (any shape): element e of the slab, the operand's contiguous axis fastest
  const scalarA = transposeA
    ? `let kk = e / ${bm}; let mm = e % ${bm}; let gm = m0 + mm; let gk = k0 + kk;
       var v = 0.0;
       if (gm < uniforms.m && gk < kEnd) { v = A[aBase + gk * uniforms.m + gm]; }
       As[kk * ${bm4} + mm / 4][mm % 4] = v;`
    : `let mm = e / ${bk}; let kk = e % ${bk}; let gm = m0 + mm; let gk = k0 + kk;
       var v = 0.0;
       if (gm < uniforms.m && gk < kEnd) { v = A[aBase + gm * uniforms.k + gk]; }
       As[kk * ${bm4} + mm / 4][mm % 4] = v;`;
  const scalarB = transposeB
    ? `let nn = e / ${bk}; let kk = e % ${bk}; let gn = n0 + nn; let gk = k0 + kk;
       var v = 0.0;
       if (gn < uniforms.n && gk < kEnd) { v = B[bBase + gn * uniforms.k + gk]; }
       Bs[kk * ${bn4} + nn / 4][nn % 4] = v;`
    : `let kk = e / ${bn}; let nn = e % ${bn}; let gn = n0 + nn; let gk = k0 + kk;
       var v = 0.0;
       if (gn < uniforms.n && gk < kEnd) { v = B[bBase + gk * uniforms.n + gn]; }
       Bs[kk * ${bn4} + nn / 4][nn % 4] = v;`;

  // vec4 staging: each thread fetches `loadsA` (`loadsB`) vec4s of a slab into registers, then stores them
  const loadsA = (bm * bk) / 4 / threads;
  const loadsB = (bn * bk) / 4 / threads;
  const fetch: string[] = [];
  const store: string[] = [];
  for (let j = 0; j < loadsA; j++) {
    const v = `(tid + ${j * threads})`;
    if (transposeA) {
      // rows of k, m contiguous: a vec4 is four m of one k
      fetch.push(`{ let kk = ${v} / ${bm / 4}; let mq = ${v} % ${bm / 4}; let gk = k1 + kk; let gm = m0 + 4 * mq;
        ra${j} = vec4<f32>(0.0);
        if (gk < kEnd && gm < uniforms.m) { ra${j} = A[(aBase + gk * uniforms.m + gm) / 4]; } }`);
      store.push(`{ let kk = ${v} / ${bm / 4}; let mq = ${v} % ${bm / 4}; As[sa + kk * ${bm4} + mq] = ra${j}; }`);
    } else {
      // rows of m, k contiguous: a vec4 is four k of one m, stored down a column
      fetch.push(`{ let mm = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let gm = m0 + mm; let gk = k1 + 4 * kq;
        ra${j} = vec4<f32>(0.0);
        if (gm < uniforms.m && gk < kEnd) { ra${j} = A[(aBase + gm * uniforms.k + gk) / 4]; } }`);
      store.push(`{ let mm = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let col = mm / 4; let lane = mm % 4;
        As[sa + (4 * kq) * ${bm4} + col][lane] = ra${j}.x; As[sa + (4 * kq + 1) * ${bm4} + col][lane] = ra${j}.y;
        As[sa + (4 * kq + 2) * ${bm4} + col][lane] = ra${j}.z; As[sa + (4 * kq + 3) * ${bm4} + col][lane] = ra${j}.w; }`);
    }
  }
  for (let j = 0; j < loadsB; j++) {
    const v = `(tid + ${j * threads})`;
    if (transposeB) {
      fetch.push(`{ let nn = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let gn = n0 + nn; let gk = k1 + 4 * kq;
        rb${j} = vec4<f32>(0.0);
        if (gn < uniforms.n && gk < kEnd) { rb${j} = B[(bBase + gn * uniforms.k + gk) / 4]; } }`);
      store.push(`{ let nn = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let col = nn / 4; let lane = nn % 4;
        Bs[sb + (4 * kq) * ${bn4} + col][lane] = rb${j}.x; Bs[sb + (4 * kq + 1) * ${bn4} + col][lane] = rb${j}.y;
        Bs[sb + (4 * kq + 2) * ${bn4} + col][lane] = rb${j}.z; Bs[sb + (4 * kq + 3) * ${bn4} + col][lane] = rb${j}.w; }`);
    } else {
      fetch.push(`{ let kk = ${v} / ${bn / 4}; let nq = ${v} % ${bn / 4}; let gk = k1 + kk; let gn = n0 + 4 * nq;
        rb${j} = vec4<f32>(0.0);
        if (gk < kEnd && gn < uniforms.n) { rb${j} = B[(bBase + gk * uniforms.n + gn) / 4]; } }`);
      store.push(`{ let kk = ${v} / ${bn / 4}; let nq = ${v} % ${bn / 4}; Bs[sb + kk * ${bn4} + nq] = rb${j}; }`);
    }
  }
  // the scalar path mixes: a vec4 operand still stages through scalar reads of its vec4 array
  const scalarRead = (name: 'A' | 'B', vec: boolean) =>
    vec ? (idx: string) => `${name}[(${idx}) / 4][(${idx}) % 4]` : (idx: string) => `${name}[${idx}]`;
  const readA = scalarRead('A', vec4A);
  const readB = scalarRead('B', vec4B);
  const scalarAFixed = scalarA.replace(/A\[([^\]]+)\]/, (_m, idx: string) => readA(idx));
  const scalarBFixed = scalarB.replace(/B\[([^\]]+)\]/, (_m, idx: string) => readB(idx));

  // the inner products of a slab, UNROLL k at a time: per k, TM/4 vec4s of A, TN/4 of B, TM×TN/4 vec4 FMAs
  const body: string[] = [];
  for (let u = 0; u < UNROLL; u++) {
    for (let p = 0; p < tm4; p++) body.push(`a${p} = As[ao + (kb + ${u}) * ${bm4} + ${p * wgy} + ty];`);
    for (let q = 0; q < tn4; q++) body.push(`b${q} = Bs[bo + (kb + ${u}) * ${bn4} + ${q * wgx} + tx];`);
    for (let p = 0; p < tm4; p++)
      for (let i = 0; i < 4; i++)
        for (let q = 0; q < tn4; q++) {
          const acc = (p * 4 + i) * tn4 + q;
          body.push(`acc${acc} = fma(vec4<f32>(a${p}[${i}]), b${q}, acc${acc});`);
        }
  }
  const inner = [`for (var kb = 0; kb < ${bk}; kb = kb + ${UNROLL}) {`, ...body.map((l) => `  ${l}`), '}'];
  const accs = Array.from({ length: tm * tn4 }, (_, i) => `acc${i}`);
  // LoRA's low-rank term folded in before the writes (a K-extension of the product by r): acc +=
  // (s·H[row, k])·LB[col..col+3, k] over k < r; needs n % 4 == 0 so that a vec4 of columns is in range
  const lowRankLoop: string[] = [];
  if (lowRank) {
    lowRankLoop.push('for (var k = 0; k < uniforms.r; k = k + 1) {');
    for (let q = 0; q < tn4; q++)
      lowRankLoop.push(`  let cq${q} = min(n0 + (${q * wgx} + tx) * 4, uniforms.n - 4) * uniforms.r + k;
  let lb${q} = vec4<f32>(LB[cq${q}], LB[cq${q} + uniforms.r], LB[cq${q} + 2 * uniforms.r], LB[cq${q} + 3 * uniforms.r]);`);
    for (let p = 0; p < tm4; p++)
      for (let i = 0; i < 4; i++) {
        lowRankLoop.push(
          `  let hv${p}_${i} = uniforms.scale * H[min(m0 + (${p * wgy} + ty) * 4 + ${i}, uniforms.m - 1) * uniforms.r + k];`,
        );
        for (let q = 0; q < tn4; q++) {
          const acc = (p * 4 + i) * tn4 + q;
          lowRankLoop.push(`  acc${acc} = fma(vec4<f32>(hv${p}_${i}), lb${q}, acc${acc});`);
        }
      }
    lowRankLoop.push('}');
  }
  const writes: string[] = [];
  for (let p = 0; p < tm4; p++)
    for (let i = 0; i < 4; i++)
      for (let q = 0; q < tn4; q++) {
        const acc = (p * 4 + i) * tn4 + q;
        writes.push(`{
          let row = m0 + (${p * wgy} + ty) * 4 + ${i};
          let col = n0 + (${q * wgx} + tx) * 4;
          ${
            vec4Store
              ? // n is a multiple of 4: a vec4 of columns is in range or wholly out
                `if (row < uniforms.m && col < uniforms.n) { result[((zi * uniforms.m + row) * uniforms.n + col) / 4] = acc${acc}; }`
              : `if (row < uniforms.m) {
            let o = (zi * uniforms.m + row) * uniforms.n + col;
            let v = acc${acc};
            if (col + 3 < uniforms.n) { result[o] = v.x; result[o + 1] = v.y; result[o + 2] = v.z; result[o + 3] = v.w; }
            else {
              if (col < uniforms.n) { result[o] = v.x; }
              if (col + 1 < uniforms.n) { result[o + 1] = v.y; }
              if (col + 2 < uniforms.n) { result[o + 2] = v.z; }
            }
          }`
          }
        }`);
      }
  const slabA = bk * bm4;
  const slabB = bk * bn4;
  const loop = !vecPath
    ? `
      let ao = 0; let bo = 0;
      for (var kk0 = 0; kk0 < kLen; kk0 = kk0 + ${bk}) {
        let k0 = kStart + kk0;
        for (var e = tid; e < ${bm * bk}; e = e + ${threads}) { ${scalarAFixed} }
        for (var e = tid; e < ${bn * bk}; e = e + ${threads}) { ${scalarBFixed} }
        workgroupBarrier();
        ${inner.join('\n        ')}
        workgroupBarrier();
      }`
    : `
      ${Array.from({ length: loadsA }, (_, j) => `var ra${j} : vec4<f32>;`).join(' ')}
      ${Array.from({ length: loadsB }, (_, j) => `var rb${j} : vec4<f32>;`).join(' ')}
      var k1 = kStart;
      ${fetch.join('\n      ')}
      {
        let sa = 0; let sb = 0;
        ${store.join('\n        ')}
      }
      workgroupBarrier();
      var cur = 0;
      for (var kk0 = 0; kk0 < kLen; kk0 = kk0 + ${bk}) {
        k1 = kStart + kk0 + ${bk};
        let more = k1 < kEnd;
        // the next slab into registers while this one is multiplied
        if (more) {
          ${fetch.join('\n          ')}
        }
        let ao = cur * ${slabA}; let bo = cur * ${slabB};
        ${inner.join('\n        ')}
        ${
          double
            ? `// the other slab was last read before the previous barrier: store into it at once
        if (more) {
          let sa = (1 - cur) * ${slabA}; let sb = (1 - cur) * ${slabB};
          ${store.join('\n          ')}
        }
        workgroupBarrier();
        cur = 1 - cur;`
            : `workgroupBarrier();
        if (more) {
          let sa = 0; let sb = 0;
          ${store.join('\n          ')}
        }
        workgroupBarrier();`
        }
      }`;
  return {
    outputShape: [batch * splits, m, n],
    shaderKey: `LoraMatmulTiled_${bm}_${bn}_${bk}_${tm}_${tn}_${transposeA}_${transposeB}_${pad ? 'pad' : 'nopad'}_${vecPath ? 'vec4' : 'scalar'}${lowRank ? '_lowrank' : ''}${warp ? '_warp' : ''}${double ? '_double' : ''}${vec4Store ? '_v4out' : ''}${splits > 1 ? `_split${splits}` : ''}`,
    dispatchLayout: { x: [2], y: [1], z: [0] },
    dispatch: [Math.ceil(n / bn), Math.ceil(m / bm), batch * splits],
    variableNames: lowRank ? ['A', 'B', 'H', 'LB'] : ['A', 'B'],
    variableComponents: lowRank ? [vec4A ? 4 : 1, vec4B ? 4 : 1, 1, 1] : [vec4A ? 4 : 1, vec4B ? 4 : 1],
    workgroupSize: warp ? [threads, 1, 1] : [wgx, wgy, 1],
    ...(vec4Store ? { outputComponent: 4 } : {}),
    uniforms: `m : i32, n : i32, k : i32, batchA : i32, batchB : i32,${lowRank ? ' r : i32, scale : f32,' : ''}`,
    getUserCode: () => `
    var<workgroup> As : array<vec4<f32>, ${slabs * slabA}>;
    var<workgroup> Bs : array<vec4<f32>, ${slabs * slabB}>;
    fn main() {
      ${
        warp
          ? `// a subgroup of 32 covers 8 × 4 register blocks (loads stay by linear index)
      let tid = i32(localId.x);
      let lane = tid % 32;
      let wq = tid / 32;
      let tx = (wq % ${wgx / 8}) * 8 + lane % 8;
      let ty = (wq / ${wgx / 8}) * 4 + lane / 8;`
          : `let tx = i32(localId.x);
      let ty = i32(localId.y);
      let tid = ty * ${wgx} + tx;`
      }
      let n0 = i32(workgroupId.x) * ${bn};
      let m0 = i32(workgroupId.y) * ${bm};
      // split-K: workgroup z is batch · splits + split; each split sums its own run of K into its own output slice
      let zi = i32(workgroupId.z);
      let batch = zi / ${splits};
      let split = zi % ${splits};
      ${
        splits === 1
          ? 'let kStart = 0; let kEnd = uniforms.k; let kLen = uniforms.k;'
          : `// every split runs the same (uniform) number of slabs, past kEnd reading zeros: the loop holds barriers
      let kLen = ((uniforms.k + ${splits * bk - 1}) / ${splits * bk}) * ${bk};
      let kStart = split * kLen;
      let kEnd = min(kStart + kLen, uniforms.k);`
      }
      let aBase = select(batch, 0, uniforms.batchA == 1) * uniforms.m * uniforms.k;
      let bBase = select(batch, 0, uniforms.batchB == 1) * uniforms.k * uniforms.n;
      ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join(' ')}
      ${Array.from({ length: tm4 }, (_, p) => `var a${p} : vec4<f32>;`).join(' ')}
      ${Array.from({ length: tn4 }, (_, q) => `var b${q} : vec4<f32>;`).join(' ')}
      ${loop}
      ${lowRank && splits > 1 ? `if (split == 0) { ${lowRankLoop.join('\n      ')} }` : lowRankLoop.join('\n      ')}
      ${writes.join('\n      ')}
    }`,
  };
}

/** Rows and threads along K per row of {@link thinRowsProgram}'s workgroups. */
const THIN_ROWS = 16;
const THIN_LANES = 16;
/** Output columns reduced per round of workgroup memory. */
const THIN_CHUNK = 8;

/**
 * out[M, N] = A[M, K]·B[N, K]ᵀ for a thin N (≤ 64: LoRA's x·Aᵀ), K a multiple of 4: each workgroup
 * takes 16 rows, 16 threads along K per row each summing every 16th vec4 of K for all N columns in
 * registers; the 16 partial sums of an output are then added in workgroup memory, 8 columns a round.
 * One dispatch, no partial outputs in memory.
 */
export function thinRowsProgram(m: number, n: number): WebGPUProgramLike {
  const accs = Array.from({ length: n }, (_, c) => `acc${c}`);
  const dots = accs.map((a, c) => `${a} = ${a} + dot(xv, B[(${c} * uniforms.k + k) / 4]);`);
  const rounds: string[] = [];
  const stride = THIN_ROWS * THIN_LANES + 1; // one more than the threads: no bank conflicts in the sums
  for (let c0 = 0; c0 < n; c0 += THIN_CHUNK) {
    const cols = Math.min(THIN_CHUNK, n - c0);
    rounds.push(`
      ${Array.from({ length: cols }, (_, j) => `red[${j * stride} + tid] = acc${c0 + j};`).join(' ')}
      workgroupBarrier();
      if (lane < ${cols}) {
        var s = 0.0;
        for (var l = 0; l < ${THIN_LANES}; l = l + 1) { s = s + red[lane * ${stride} + rl * ${THIN_LANES} + l]; }
        if (row < uniforms.m) { result[row * ${n} + ${c0} + lane] = s; }
      }
      workgroupBarrier();`);
  }
  return {
    outputShape: [m, n],
    shaderKey: `LoraMatmulThinRows_${n}`,
    dispatchLayout: { x: [1], y: [0] },
    dispatch: [Math.ceil(m / THIN_ROWS), 1, 1],
    variableNames: ['A', 'B'],
    variableComponents: [4, 4],
    workgroupSize: [THIN_ROWS * THIN_LANES, 1, 1],
    uniforms: 'm : i32, k : i32,',
    getUserCode: () => `
    var<workgroup> red : array<f32, ${THIN_CHUNK * stride}>;
    fn main() {
      let tid = i32(localId.x);
      let lane = tid % ${THIN_LANES};
      let rl = tid / ${THIN_LANES};
      let row = i32(workgroupId.x) * ${THIN_ROWS} + rl;
      let rr = min(row, uniforms.m - 1);
      ${accs.map((a) => `var ${a} = 0.0;`).join(' ')}
      for (var k = lane * 4; k < uniforms.k; k = k + ${4 * THIN_LANES}) {
        let xv = A[(rr * uniforms.k + k) / 4];
        ${dots.join('\n        ')}
      }
      ${rounds.join('\n')}
    }`,
  };
}

/** Whether {@link thinRowsProgram} takes op(A)·op(B) (with `thinRows` on; batch folded into rows). */
export function takesThinRows(
  n: number,
  k: number,
  batchB: number,
  transposeA: boolean,
  transposeB: boolean,
  rows: number,
): boolean {
  return (
    optionsRef().thinRows &&
    !transposeA &&
    transposeB &&
    batchB === 1 &&
    n <= 64 &&
    k % 4 === 0 &&
    k >= 256 &&
    rows >= 256 &&
    Math.ceil(rows / THIN_ROWS) <= 65535
  );
}

interface BatchMatMulArgs {
  inputs: { a: tf.TensorInfo; b: tf.TensorInfo };
  backend: WebGPUBackendLike;
  attrs: { transposeA: boolean; transposeB: boolean };
}

/** Which tile a product gets, or null for tfjs's own program (small outputs, odd batching). */
export function chooseTile(
  choice: KernelOptions['matmul'],
  batch: number,
  m: number,
  n: number,
  k: number,
  largeTileGroups = 128,
  mediumTile: KernelOptions['mediumTile'] = 'none',
  splitK = false,
  thinTiles = false,
): MatmulTile | null {
  if (choice === 'tfjs') return null;
  if (choice === 'tiled-64') return TILES['64'];
  if (choice === 'tiled-128') return TILES['128'];
  if (choice === 'tiled-128x64') return TILES['128x64'];
  if (choice === 'tiled-64x128') return TILES['64x128'];
  const groups = (t: MatmulTile) => batch * Math.ceil(m / t.bm) * Math.ceil(n / t.bn);
  // with thinTiles, a rank-wide output over a long K (LoRA's x·Aᵀ, dy·B, dyᵀ·h, dhᵀ·x) gets a thin
  // tile; chooseSplitK then splits its K
  if (thinTiles && Math.min(m, n) <= 64 && Math.max(m, n) >= 256 && k >= 256)
    return n <= m ? TILES['64x16'] : TILES['16x64'];
  // products with a tiny output or a tiny K are better served by tfjs's split-K / small-output programs
  if (m < 32 || n < 32 || k < 16) return null;
  if (mediumTile === 'none') {
    // 128² tiles only with enough workgroups to fill the GPU (one 256-thread workgroup per compute unit
    // leaves it latency-bound); below that, 64² tiles give four times as many
    if (groups(TILES['128']) >= largeTileGroups) return TILES['128'];
    if (groups(TILES['64']) >= 32) return TILES['64'];
    return null;
  }
  // with a medium tile: the largest tile that gives enough workgroups and wastes at most a quarter
  // of its rows and columns past the output's edge (p·v's 64 columns in a 128-wide tile waste half)
  const fits = (t: MatmulTile) => m / (Math.ceil(m / t.bm) * t.bm) >= 0.75 && n / (Math.ceil(n / t.bn) * t.bn) >= 0.75;
  const medium = TILES[mediumTile];
  if (groups(TILES['128']) >= largeTileGroups && fits(TILES['128'])) return TILES['128'];
  if (groups(medium) >= largeTileGroups / 2 && fits(medium)) return medium;
  // with split-K, a long K keeps the medium tile: splitting K gives the workgroups (k/v's 1024 × 256)
  if (splitK && k >= 1024 && groups(medium) >= 16 && fits(medium)) return medium;
  if (groups(TILES['64']) >= 32) return TILES['64'];
  return null;
}

/**
 * How many runs of K a product's tile is split over (1: none): with `matmulSplitK`, a product giving
 * fewer than 96 workgroups gets enough splits for about 128 (at most 4, 8 for a thin tile; each at
 * least 256 deep).
 */
export function chooseSplitK(batch: number, m: number, n: number, k: number, tile: MatmulTile): number {
  if (!optionsRef().matmulSplitK) return 1;
  const groups = batch * Math.ceil(m / tile.bm) * Math.ceil(n / tile.bn);
  if (groups >= 96) return 1;
  // thin tiles (64 threads) take up to 8 splits
  let splits = Math.min(tile.bm * tile.bn <= 1024 ? 8 : 4, Math.ceil(128 / groups));
  while (splits > 1 && k / splits < 256) splits--;
  return splits;
}

/**
 * Runs a tiled program made with `splitK = splits` (its output `[batch · splits, m, n]`), then, when
 * split, sums each batch's partial outputs in one more dispatch; returns `[batch, m, n]`.
 */
export function runTiled(
  backend: WebGPUBackendLike,
  program: WebGPUProgramLike,
  inputs: tf.TensorInfo[],
  uniforms: UniformValue[],
  splits: number,
  [batch, m, n]: [number, number, number],
): tf.TensorInfo {
  const partial = backend.runWebGPUProgram(program, inputs, 'float32', uniforms);
  if (splits === 1) return partial;
  const c = (m * n) % 4 === 0 ? 4 : 1;
  const terms = Array.from({ length: splits - 1 }, (_, j) => ` + P[(b * ${splits} + ${j + 1}) * mn + r]`).join('');
  const sum = elementwiseProgram(
    `LoraMatmulSplitSum_${splits}`,
    [batch * m * n],
    ['P'],
    c,
    'mn : i32,',
    `let mn = uniforms.mn; let b = index / mn; let r = index % mn;
        setOutputAtIndex(index, P[b * ${splits} * mn + r]${terms});`,
  );
  const out = backend.runWebGPUProgram(sum, [flat(partial)], 'float32', [{ type: 'int32', data: [(m * n) / c] }]);
  backend.disposeData(partial.dataId);
  return out;
}

/** K from which `matmulDepth: 'auto'` takes 32-deep slabs. */
export const LONG_K = 2048;

/** The program variations in force (see {@link MatmulFeatures}) for a product over `k`. */
export function matmulFeatures(k: number): MatmulFeatures {
  const o = optionsRef();
  const depth = o.matmulDepth === 'auto' ? (k >= LONG_K ? 32 : 16) : o.matmulDepth;
  return { warp: o.matmulWarpLayout, double: o.matmulDoubleBuffer, vec4Store: o.matmulVec4Store, depth };
}

let original: tf.KernelFunc | null = null;

function tiledBatchMatMul(args: BatchMatMulArgs): tf.TensorInfo {
  const { a, b } = args.inputs;
  const { transposeA, transposeB } = args.attrs;
  const backend = args.backend;
  const ra = a.shape.length;
  const rb = b.shape.length;
  const m = (transposeA ? a.shape[ra - 1] : a.shape[ra - 2]) as number;
  const k = (transposeA ? a.shape[ra - 2] : a.shape[ra - 1]) as number;
  const n = (transposeB ? b.shape[rb - 2] : b.shape[rb - 1]) as number;
  const kb = (transposeB ? b.shape[rb - 1] : b.shape[rb - 2]) as number;
  const batchA = sizeOf(a.shape.slice(0, -2));
  const batchB = sizeOf(b.shape.slice(0, -2));
  const batch = Math.max(batchA, batchB);
  // throws tfjs's own error when the batch axes do not broadcast
  const outer = tf.backend_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const options = optionsRef();
  if (
    options.matmul === 'tiled' &&
    a.dtype === 'float32' &&
    b.dtype === 'float32' &&
    k === kb &&
    sizeOf(outer) === batch &&
    (batchA === batch || batchA === 1) &&
    takesThinRows(n, k, batchB, transposeA, transposeB, batchA * m)
  ) {
    // B is shared by every batch: A's batches are just more rows (a broadcast A is one batch of rows)
    const rows = batchA * m;
    const out = backend.runWebGPUProgram(thinRowsProgram(rows, n), [flat(a, [rows, k]), flat(b, [n, k])], 'float32', [
      { type: 'int32', data: [rows] },
      { type: 'int32', data: [k] },
    ]);
    return { dataId: out.dataId, shape: [...outer, m, n], dtype: 'float32' };
  }
  const tile = chooseTile(
    options.matmul,
    batch,
    m,
    n,
    k,
    options.largeTileGroups,
    options.mediumTile,
    options.matmulSplitK,
    options.thinTiles,
  );
  const simpleBatch =
    sizeOf(outer) === batch && (batchA === batch || batchA === 1) && (batchB === batch || batchB === 1);
  if (tile === null || k !== kb || a.dtype !== 'float32' || b.dtype !== 'float32' || !simpleBatch)
    return (original as tf.KernelFunc)(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
  const storage = backend.device.limits.maxComputeWorkgroupStorageSize ?? 16384;
  // vec4 reads need the operand's contiguous axis (and so every batch's offset) to be a multiple of 4
  const vec4A = (transposeA ? m : k) % 4 === 0;
  const vec4B = (transposeB ? k : n) % 4 === 0;
  const splits = chooseSplitK(batch, m, n, k, tile);
  const program = tiledMatmulProgram([batch, m, n], transposeA, transposeB, tile, storage, vec4A, vec4B, false, {
    ...matmulFeatures(k),
    splitK: splits,
  });
  const out = runTiled(
    backend,
    program,
    [
      flat(a, [batchA, transposeA ? k : m, transposeA ? m : k]),
      flat(b, [batchB, transposeB ? n : k, transposeB ? k : n]),
    ],
    [
      { type: 'int32', data: [m] },
      { type: 'int32', data: [n] },
      { type: 'int32', data: [k] },
      { type: 'int32', data: [batchA] },
      { type: 'int32', data: [batchB] },
    ],
    splits,
    [batch, m, n],
  );
  return { dataId: out.dataId, shape: [...outer, m, n], dtype: 'float32' };
}

/**
 * Puts this package's BatchMatMul in front of tfjs-backend-webgpu's (once; it hands every product
 * it does not take back to tfjs's). Needs the webgpu backend registered: initBackend('webgpu') first.
 */
export function installMatmulOverride(): void {
  if (original) return;
  const config = tf.getKernel('BatchMatMul', 'webgpu');
  if (!config)
    throw new Error(
      "configureKernels({ matmul: 'tiled' }) needs tfjs-backend-webgpu loaded: call initBackend('webgpu') first",
    );
  original = config.kernelFunc;
  tf.unregisterKernel('BatchMatMul', 'webgpu');
  tf.registerKernel({
    kernelName: 'BatchMatMul',
    backendName: 'webgpu',
    kernelFunc: tiledBatchMatMul as unknown as tf.KernelFunc,
  });
}
