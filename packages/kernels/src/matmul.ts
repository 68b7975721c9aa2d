import * as tf from '@tensorflow/tfjs-core';
import { type KernelOptions, optionsRef } from './options';
import { type WebGPUBackendLike, type WebGPUProgramLike, flat, sizeOf } from './webgpu-program';

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

export const TILES: Record<'64' | '128', MatmulTile> = {
  '64': { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  '128': { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
};

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
): WebGPUProgramLike {
  const { bm, bn, bk, tm, tn } = tile;
  const wgx = bn / tn;
  const wgy = bm / tm;
  const threads = wgx * wgy;
  // An operand read along k (A plain, B transposed) is stored one k-row per thread of a warp: rows
  // one vec4 longer than the tile put those stores in different memory banks, where there is room.
  const wantPadA = transposeA ? 0 : 1;
  const wantPadB = transposeB ? 1 : 0;
  const bytes = (pa: number, pb: number) => 16 * bk * (bm / 4 + pa + bn / 4 + pb);
  const pad = bytes(wantPadA, wantPadB) <= workgroupStorage;
  const bm4 = bm / 4 + (pad ? wantPadA : 0);
  const bn4 = bn / 4 + (pad ? wantPadB : 0);
  const tm4 = tm / 4;
  const tn4 = tn / 4;
  const [batch, m, n] = outShape;

  // scalar staging (any shape): element e of the slab, the operand's contiguous axis fastest
  const scalarA = transposeA
    ? `let kk = e / ${bm}; let mm = e % ${bm}; let gm = m0 + mm; let gk = k0 + kk;
       var v = 0.0;
       if (gm < uniforms.m && gk < uniforms.k) { v = A[aBase + gk * uniforms.m + gm]; }
       As[kk * ${bm4} + mm / 4][mm % 4] = v;`
    : `let mm = e / ${bk}; let kk = e % ${bk}; let gm = m0 + mm; let gk = k0 + kk;
       var v = 0.0;
       if (gm < uniforms.m && gk < uniforms.k) { v = A[aBase + gm * uniforms.k + gk]; }
       As[kk * ${bm4} + mm / 4][mm % 4] = v;`;
  const scalarB = transposeB
    ? `let nn = e / ${bk}; let kk = e % ${bk}; let gn = n0 + nn; let gk = k0 + kk;
       var v = 0.0;
       if (gn < uniforms.n && gk < uniforms.k) { v = B[bBase + gn * uniforms.k + gk]; }
       Bs[kk * ${bn4} + nn / 4][nn % 4] = v;`
    : `let kk = e / ${bn}; let nn = e % ${bn}; let gn = n0 + nn; let gk = k0 + kk;
       var v = 0.0;
       if (gn < uniforms.n && gk < uniforms.k) { v = B[bBase + gk * uniforms.n + gn]; }
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
        if (gk < uniforms.k && gm < uniforms.m) { ra${j} = A[(aBase + gk * uniforms.m + gm) / 4]; } }`);
      store.push(`{ let kk = ${v} / ${bm / 4}; let mq = ${v} % ${bm / 4}; As[kk * ${bm4} + mq] = ra${j}; }`);
    } else {
      // rows of m, k contiguous: a vec4 is four k of one m, stored down a column
      fetch.push(`{ let mm = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let gm = m0 + mm; let gk = k1 + 4 * kq;
        ra${j} = vec4<f32>(0.0);
        if (gm < uniforms.m && gk < uniforms.k) { ra${j} = A[(aBase + gm * uniforms.k + gk) / 4]; } }`);
      store.push(`{ let mm = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let col = mm / 4; let lane = mm % 4;
        As[(4 * kq) * ${bm4} + col][lane] = ra${j}.x; As[(4 * kq + 1) * ${bm4} + col][lane] = ra${j}.y;
        As[(4 * kq + 2) * ${bm4} + col][lane] = ra${j}.z; As[(4 * kq + 3) * ${bm4} + col][lane] = ra${j}.w; }`);
    }
  }
  for (let j = 0; j < loadsB; j++) {
    const v = `(tid + ${j * threads})`;
    if (transposeB) {
      fetch.push(`{ let nn = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let gn = n0 + nn; let gk = k1 + 4 * kq;
        rb${j} = vec4<f32>(0.0);
        if (gn < uniforms.n && gk < uniforms.k) { rb${j} = B[(bBase + gn * uniforms.k + gk) / 4]; } }`);
      store.push(`{ let nn = ${v} / ${bk / 4}; let kq = ${v} % ${bk / 4}; let col = nn / 4; let lane = nn % 4;
        Bs[(4 * kq) * ${bn4} + col][lane] = rb${j}.x; Bs[(4 * kq + 1) * ${bn4} + col][lane] = rb${j}.y;
        Bs[(4 * kq + 2) * ${bn4} + col][lane] = rb${j}.z; Bs[(4 * kq + 3) * ${bn4} + col][lane] = rb${j}.w; }`);
    } else {
      fetch.push(`{ let kk = ${v} / ${bn / 4}; let nq = ${v} % ${bn / 4}; let gk = k1 + kk; let gn = n0 + 4 * nq;
        rb${j} = vec4<f32>(0.0);
        if (gk < uniforms.k && gn < uniforms.n) { rb${j} = B[(bBase + gk * uniforms.n + gn) / 4]; } }`);
      store.push(`{ let kk = ${v} / ${bn / 4}; let nq = ${v} % ${bn / 4}; Bs[kk * ${bn4} + nq] = rb${j}; }`);
    }
  }
  const vecPath = vec4A && vec4B;
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
    for (let p = 0; p < tm4; p++) body.push(`a${p} = As[(kb + ${u}) * ${bm4} + ${p * wgy} + ty];`);
    for (let q = 0; q < tn4; q++) body.push(`b${q} = Bs[(kb + ${u}) * ${bn4} + ${q * wgx} + tx];`);
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
          if (row < uniforms.m) {
            let o = (batch * uniforms.m + row) * uniforms.n + col;
            let v = acc${acc};
            if (col + 3 < uniforms.n) { result[o] = v.x; result[o + 1] = v.y; result[o + 2] = v.z; result[o + 3] = v.w; }
            else {
              if (col < uniforms.n) { result[o] = v.x; }
              if (col + 1 < uniforms.n) { result[o + 1] = v.y; }
              if (col + 2 < uniforms.n) { result[o + 2] = v.z; }
            }
          }
        }`);
      }
  const loop = vecPath
    ? `
      ${Array.from({ length: loadsA }, (_, j) => `var ra${j} : vec4<f32>;`).join(' ')}
      ${Array.from({ length: loadsB }, (_, j) => `var rb${j} : vec4<f32>;`).join(' ')}
      var k1 = 0;
      ${fetch.join('\n      ')}
      ${store.join('\n      ')}
      workgroupBarrier();
      for (var k0 = 0; k0 < uniforms.k; k0 = k0 + ${bk}) {
        k1 = k0 + ${bk};
        let more = k1 < uniforms.k;
        // the next slab into registers while this one is multiplied
        if (more) {
          ${fetch.join('\n          ')}
        }
        ${inner.join('\n        ')}
        workgroupBarrier();
        if (more) {
          ${store.join('\n          ')}
        }
        workgroupBarrier();
      }`
    : `
      for (var k0 = 0; k0 < uniforms.k; k0 = k0 + ${bk}) {
        for (var e = tid; e < ${bm * bk}; e = e + ${threads}) { ${scalarAFixed} }
        for (var e = tid; e < ${bn * bk}; e = e + ${threads}) { ${scalarBFixed} }
        workgroupBarrier();
        ${inner.join('\n        ')}
        workgroupBarrier();
      }`;
  return {
    outputShape: [batch, m, n],
    shaderKey: `LoraMatmulTiled_${bm}_${bn}_${bk}_${tm}_${tn}_${transposeA}_${transposeB}_${pad ? 'pad' : 'nopad'}_${vecPath ? 'vec4' : 'scalar'}${lowRank ? '_lowrank' : ''}`,
    dispatchLayout: { x: [2], y: [1], z: [0] },
    dispatch: [Math.ceil(n / bn), Math.ceil(m / bm), batch],
    variableNames: lowRank ? ['A', 'B', 'H', 'LB'] : ['A', 'B'],
    variableComponents: lowRank ? [vec4A ? 4 : 1, vec4B ? 4 : 1, 1, 1] : [vec4A ? 4 : 1, vec4B ? 4 : 1],
    workgroupSize: [wgx, wgy, 1],
    uniforms: `m : i32, n : i32, k : i32, batchA : i32, batchB : i32,${lowRank ? ' r : i32, scale : f32,' : ''}`,
    getUserCode: () => `
    var<workgroup> As : array<vec4<f32>, ${bk * bm4}>;
    var<workgroup> Bs : array<vec4<f32>, ${bk * bn4}>;
    fn main() {
      let tx = i32(localId.x);
      let ty = i32(localId.y);
      let tid = ty * ${wgx} + tx;
      let n0 = i32(workgroupId.x) * ${bn};
      let m0 = i32(workgroupId.y) * ${bm};
      let batch = i32(workgroupId.z);
      let aBase = select(batch, 0, uniforms.batchA == 1) * uniforms.m * uniforms.k;
      let bBase = select(batch, 0, uniforms.batchB == 1) * uniforms.k * uniforms.n;
      ${accs.map((a) => `var ${a} = vec4<f32>(0.0);`).join(' ')}
      ${Array.from({ length: tm4 }, (_, p) => `var a${p} : vec4<f32>;`).join(' ')}
      ${Array.from({ length: tn4 }, (_, q) => `var b${q} : vec4<f32>;`).join(' ')}
      ${loop}
      ${lowRankLoop.join('\n      ')}
      ${writes.join('\n      ')}
    }`,
  };
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
): MatmulTile | null {
  if (choice === 'tfjs') return null;
  if (choice === 'tiled-64') return TILES['64'];
  if (choice === 'tiled-128') return TILES['128'];
  const groups = (t: MatmulTile) => batch * Math.ceil(m / t.bm) * Math.ceil(n / t.bn);
  // products with a tiny output or a tiny K are better served by tfjs's split-K / small-output programs
  if (m < 32 || n < 32 || k < 16) return null;
  // 128² tiles only with enough workgroups to fill the GPU (one 256-thread workgroup per compute unit
  // leaves it latency-bound); below that, 64² tiles give four times as many
  if (groups(TILES['128']) >= largeTileGroups) return TILES['128'];
  if (groups(TILES['64']) >= 32) return TILES['64'];
  return null;
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
  const tile = chooseTile(optionsRef().matmul, batch, m, n, k, optionsRef().largeTileGroups);
  const simpleBatch =
    sizeOf(outer) === batch && (batchA === batch || batchA === 1) && (batchB === batch || batchB === 1);
  if (tile === null || k !== kb || a.dtype !== 'float32' || b.dtype !== 'float32' || !simpleBatch)
    return (original as tf.KernelFunc)(args as unknown as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
  const storage = backend.device.limits.maxComputeWorkgroupStorageSize ?? 16384;
  // vec4 reads need the operand's contiguous axis (and so every batch's offset) to be a multiple of 4
  const vec4A = (transposeA ? m : k) % 4 === 0;
  const vec4B = (transposeB ? k : n) % 4 === 0;
  const program = tiledMatmulProgram([batch, m, n], transposeA, transposeB, tile, storage, vec4A, vec4B);
  const out = backend.runWebGPUProgram(
    program,
    [
      flat(a, [batchA, transposeA ? k : m, transposeA ? m : k]),
      flat(b, [batchB, transposeB ? n : k, transposeB ? k : n]),
    ],
    'float32',
    [
      { type: 'int32', data: [m] },
      { type: 'int32', data: [n] },
      { type: 'int32', data: [k] },
      { type: 'int32', data: [batchA] },
      { type: 'int32', data: [batchB] },
    ],
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
