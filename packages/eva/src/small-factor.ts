/**
 * The q×q factorisations of EVA's incremental PCA kept on the backend, for every matrix of a stack
 * in one dispatch: the inverse of a (shifted) Cholesky factor, for CholeskyQR, and a one-sided
 * Jacobi SVD, for the core of the randomized SVD. On webgpu each is one WGSL program with one
 * workgroup per matrix (the matrices are small: q = 2·r·rho columns), so the subspace iteration never
 * waits on a read-back; on the cpu backend the same arithmetic runs in JavaScript (what the tests
 * check the programs against). float32 throughout.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackendLike, WebGPUProgramLike } from '@lora/tensor';

const CHOL = 'LoraEvaCholeskyInverse';
const JACOBI = 'LoraEvaJacobiSvd';

/** Sweeps of the Jacobi SVD before it gives up (float32 converges in 6–10 for q ≤ 256). */
const MAX_SWEEPS = 30;
/** Shifts tried by the Cholesky factorisation, as multiples of the Gram matrix's trace (0: unshifted). */
const SHIFTS = [0, 1e-6, 1e-4, 1e-2];

/** A pair is rotated while |aᵢ·aⱼ| > tol·‖aᵢ‖·‖aⱼ‖; q·2⁻²² stays above float32's rounding of the dot. */
function jacobiTolerance(q: number): number {
  return q * 2 ** -22;
}

/** Whether this backend runs {@link choleskyInverseStack} and {@link jacobiSvdStack}. */
export function factorsOnBackend(): boolean {
  register();
  const name = tf.getBackend();
  return name === 'webgpu' || name === 'cpu';
}

/**
 * For each q×q symmetric positive semi-definite G of a stack [L, q, q] (its lower triangle read):
 * R⁻¹, upper triangular, with Rᵀ·R = G + s·I, s the first of 0, 1e-6, 1e-4, 1e-2 times G's trace
 * for which the float32 factorisation succeeds; the identity when none does (a zero matrix). Y·R⁻¹ is
 * then a (shifted) CholeskyQR pass over Y when G = YᵀY. Leaves G to the caller.
 */
export function choleskyInverseStack(G: tf.Tensor3D): tf.Tensor3D {
  register();
  return tf.engine().runKernel(CHOL, { G } as unknown as tf.NamedTensorMap) as tf.Tensor3D;
}

/**
 * The SVD R = U·diag(S)·Vᵀ of each q×q matrix of a stack [L, q, q] by one-sided Jacobi: S [L, q]
 * descending, and W [L, q, q] the singular vectors as columns in the same order: U when `left`, V
 * otherwise. Leaves R to the caller.
 */
export function jacobiSvdStack(R: tf.Tensor3D, left: boolean): { W: tf.Tensor3D; S: tf.Tensor2D } {
  register();
  const [L, q] = R.shape;
  const packed = tf.engine().runKernel(
    JACOBI,
    { R } as unknown as tf.NamedTensorMap,
    {
      left,
    } as unknown as tf.NamedAttrMap,
  ) as tf.Tensor2D;
  const out = tf.tidy(() => ({
    W: tf.reshape(tf.slice(packed, [0, 2 * q * q], [L, q * q]), [L, q, q]) as tf.Tensor3D,
    S: tf.slice(packed, [0, 3 * q * q], [L, q]) as tf.Tensor2D,
  }));
  packed.dispose();
  return out;
}

// ---------------------------------------------------------------------------------------------
// The arithmetic in JavaScript (cpu backend), statement for statement what the programs below do.

function choleskyInverseValues(g: ArrayLike<number>, L: number, q: number): Float32Array {
  const out = new Float32Array(L * q * q);
  const a = new Float32Array(q * q);
  const dg = new Float32Array(q);
  for (let m = 0; m < L; m++) {
    const o = m * q * q;
    let tr = 0;
    for (let i = 0; i < q; i++) tr += g[o + i * q + i] as number;
    let ok = false;
    for (const f of SHIFTS) {
      const sh = f * tr;
      for (let i = 0; i < q; i++)
        for (let j = 0; j <= i; j++) a[i * q + j] = (g[o + i * q + j] as number) + (i === j ? sh : 0);
      ok = true;
      for (let j = 0; j < q; j++) {
        const s = a[j * q + j] as number;
        const good = s > 0 && s < 3.4e38;
        if (!good) ok = false;
        const d = Math.sqrt(good ? s : 1);
        dg[j] = d;
        for (let i = j + 1; i < q; i++) a[i * q + j] = (a[i * q + j] as number) / d;
        for (let i = j + 1; i < q; i++)
          for (let c = j + 1; c <= i; c++)
            a[i * q + c] = (a[i * q + c] as number) - (a[i * q + j] as number) * (a[c * q + j] as number);
      }
      if (ok) break;
    }
    if (!ok) {
      for (let i = 0; i < q; i++) out[o + i * q + i] = 1;
      continue;
    }
    // column c of L⁻¹ becomes row c of R⁻¹ = (L⁻¹)ᵀ
    for (let c = 0; c < q; c++) {
      out[o + c * q + c] = 1 / (dg[c] as number);
      for (let i = c + 1; i < q; i++) {
        let t = 0;
        for (let k = c; k < i; k++) t -= (a[i * q + k] as number) * (out[o + c * q + k] as number);
        out[o + c * q + i] = t / (dg[i] as number);
      }
    }
  }
  return out;
}

/** Round-robin pairing: round r (of q − 1) pairs every column with one other, q/2 pairs a round. */
function pairOf(r: number, p: number, q: number): [number, number] {
  const n = q - 1;
  if (p === 0) return [n, r];
  return [(r + p) % n, (r - p + n) % n];
}

function jacobiValues(rv: ArrayLike<number>, L: number, q: number, left: boolean): Float32Array {
  const size = 3 * q * q + q;
  const out = new Float32Array(L * size);
  const tol = jacobiTolerance(q);
  for (let m = 0; m < L; m++) {
    const base = m * size;
    const a = out.subarray(base, base + q * q);
    const v = out.subarray(base + q * q, base + 2 * q * q);
    for (let e = 0; e < q * q; e++) a[e] = rv[m * q * q + e] as number;
    for (let i = 0; i < q; i++) v[i * q + i] = 1;
    for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
      let rotated = false;
      for (let r = 0; r < q - 1; r++)
        for (let p = 0; p < q / 2; p++) {
          const [i, j] = pairOf(r, p, q);
          if (rotatePair(a, v, q, i, j, tol)) rotated = true;
        }
      if (!rotated) break;
    }
    writeSorted(out, base, a, v, q, left);
  }
  return out;
}

function rotatePair(a: Float32Array, v: Float32Array, q: number, i: number, j: number, tol: number): boolean {
  let alpha = 0;
  let beta = 0;
  let gamma = 0;
  for (let k = 0; k < q; k++) {
    const x = a[k * q + i] as number;
    const y = a[k * q + j] as number;
    alpha += x * x;
    beta += y * y;
    gamma += x * y;
  }
  if (!(Math.abs(gamma) > tol * Math.sqrt(alpha * beta))) return false;
  const zeta = (beta - alpha) / (2 * gamma);
  const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
  const c = 1 / Math.sqrt(1 + t * t);
  const s = c * t;
  for (let k = 0; k < q; k++) {
    const x = a[k * q + i] as number;
    const y = a[k * q + j] as number;
    a[k * q + i] = c * x - s * y;
    a[k * q + j] = s * x + c * y;
    const vx = v[k * q + i] as number;
    const vy = v[k * q + j] as number;
    v[k * q + i] = c * vx - s * vy;
    v[k * q + j] = s * vx + c * vy;
  }
  return true;
}

function writeSorted(
  out: Float32Array,
  base: number,
  a: Float32Array,
  v: Float32Array,
  q: number,
  left: boolean,
): void {
  const sig = new Float32Array(q);
  for (let j = 0; j < q; j++) {
    let s = 0;
    for (let k = 0; k < q; k++) s += (a[k * q + j] as number) ** 2;
    sig[j] = Math.sqrt(s);
  }
  for (let j = 0; j < q; j++) {
    const sj = sig[j] as number;
    let rank = 0;
    for (let i = 0; i < q; i++) {
      const si = sig[i] as number;
      if (si > sj || (si === sj && i < j)) rank++;
    }
    out[base + 3 * q * q + rank] = sj;
    const inv = sj > 0 ? 1 / sj : 0;
    for (let k = 0; k < q; k++)
      out[base + 2 * q * q + k * q + rank] = left ? (a[k * q + j] as number) * inv : (v[k * q + j] as number);
  }
}

// ---------------------------------------------------------------------------------------------
// WGSL programs (tfjs-backend-webgpu's program interface: the backend writes the bindings `result`
// and one read-only array per input, and calls `main(index)`; `localId`, `workgroupId` are set).

type WebGPUProgram = WebGPUProgramLike;
type WebGPUBackend = WebGPUBackendLike;

const WG = 64;

/** The matrix a workgroup owns (whole matrices only: no bounds check, see MAX_MATRICES). */
const MATRIX = 'i32(workgroupId.x)';
/** One workgroup a matrix, in one dispatch dimension. */
const MAX_MATRICES = 65_535;

/**
 * Whether a program keeps its q×q working matrices (`count` of them) in workgroup memory: much
 * faster than storage-buffer round trips between barriers, when the device allows that much.
 */
function fitsShared(backend: WebGPUBackend, q: number, count: number, extra: number): boolean {
  const limit = backend.device?.limits?.maxComputeWorkgroupStorageSize ?? 16_384;
  return (count * q * q + q + 4 + extra) * 4 <= limit;
}

function choleskyProgram(L: number, q: number, shared: boolean): WebGPUProgram {
  // the factor is built in place (lower triangle) in workgroup memory, or in the output itself
  const A = (e: string) => (shared ? `wa[${e}]` : `result[o + ${e}]`);
  const barrier = shared ? 'workgroupBarrier();' : 'storageBarrier();';
  return {
    outputShape: [L, q, q],
    shaderKey: `${CHOL}_${q}_${shared ? 's' : 'g'}`,
    dispatchLayout: { x: [0] },
    dispatch: [L, 1, 1],
    variableNames: ['G'],
    workgroupSize: [WG, 1, 1],
    uniforms: 'count : i32,',
    getUserCode: () => `
      const Q = ${q};
      var<workgroup> dg : array<f32, ${q}>;
      var<workgroup> fail : u32;
      var<workgroup> tr : f32;
      ${shared ? `var<workgroup> wa : array<f32, ${q * q}>;` : ''}
      fn main(index : i32) {
        let lid = i32(localId.x);
        let m = min(${MATRIX}, uniforms.count - 1);
        let o = m * Q * Q;
        if (lid == 0) {
          var t = 0.0;
          for (var i = 0; i < Q; i = i + 1) { t = t + G[o + i * Q + i]; }
          tr = t;
        }
        workgroupBarrier();
        let trace = tr;
        var ok = false;
        for (var attempt = 0; attempt < ${SHIFTS.length}; attempt = attempt + 1) {
          var f = 0.0;
          ${SHIFTS.map((s, i) => `if (attempt == ${i}) { f = ${s.toExponential()}; }`).join(' ')}
          let sh = f * trace;
          for (var e = lid; e < Q * Q; e = e + ${WG}) {
            let i = e / Q;
            let j = e % Q;
            if (j <= i) { ${A('e')} = G[o + e] + select(0.0, sh, i == j); }
          }
          if (lid == 0) { fail = 0u; }
          ${barrier}
          workgroupBarrier();
          for (var j = 0; j < Q; j = j + 1) {
            let s = ${A('j * Q + j')};
            let good = s > 0.0 && s < 3.4e38;
            if (lid == 0 && !good) { fail = 1u; }
            let d = sqrt(select(1.0, s, good));
            if (lid == 0) { dg[j] = d; }
            for (var i = j + 1 + lid; i < Q; i = i + ${WG}) { ${A('i * Q + j')} = ${A('i * Q + j')} / d; }
            ${barrier}
            let rem = Q - j - 1;
            for (var e = lid; e < rem * rem; e = e + ${WG}) {
              let i = j + 1 + e / rem;
              let c = j + 1 + e % rem;
              if (c <= i) { ${A('i * Q + c')} = ${A('i * Q + c')} - ${A('i * Q + j')} * ${A('c * Q + j')}; }
            }
            ${barrier}
          }
          let failed = workgroupUniformLoad(&fail);
          if (failed == 0u) { ok = true; break; }
        }
        workgroupBarrier();
        if (!ok) {
          for (var e = lid; e < Q * Q; e = e + ${WG}) {
            result[o + e] = select(0.0, 1.0, e / Q == e % Q);
          }
          return;
        }
        // column c of L⁻¹ (forward substitution) is row c of R⁻¹ = (L⁻¹)ᵀ: thread c writes row c only,
        // into the upper triangle (L is in the strictly lower one, its diagonal in dg)
        for (var c = lid; c < Q; c = c + ${WG}) {
          ${A('c * Q + c')} = 1.0 / dg[c];
          for (var i = c + 1; i < Q; i = i + 1) {
            var t = 0.0;
            for (var k = c; k < i; k = k + 1) { t = t - ${A('i * Q + k')} * ${A('c * Q + k')}; }
            ${A('c * Q + i')} = t / dg[i];
          }
        }
        ${barrier}
        for (var e = lid; e < Q * Q; e = e + ${WG}) {
          ${shared ? 'result[o + e] = select(0.0, wa[e], e % Q >= e / Q);' : 'if (e % Q < e / Q) { result[o + e] = 0.0; }'}
        }
      }`,
  };
}

/** Threads of the Jacobi program: each of the q/2 pairs of a round gets JWG / (q/2) of them (a power of 2). */
const JWG = 256;

function jacobiThreadsPerPair(q: number): number {
  let t = 1;
  while (t * 2 * (q / 2) <= JWG) t *= 2;
  return t;
}

function jacobiProgram(L: number, q: number, left: boolean, shared: boolean): WebGPUProgram {
  const size = 3 * q * q + q;
  // the matrix being rotated and the accumulated rotations: in workgroup memory, or in the output's
  // first two q×q blocks
  const A = (e: string) => (shared ? `wa[${e}]` : `result[base + ${e}]`);
  const V = (e: string) => (shared ? `wv[${e}]` : `result[vb + ${e}]`);
  const barrier = shared ? 'workgroupBarrier();' : 'storageBarrier(); workgroupBarrier();';
  // T threads share a pair: each sums the dot products over every T-th row, the partial sums are
  // added up through workgroup memory, and each rotates its own rows
  const T = jacobiThreadsPerPair(q);
  const groups = JWG / T;
  const passes = Math.ceil(q / 2 / groups);
  return {
    outputShape: [L, size],
    shaderKey: `${JACOBI}_${q}_${left ? 'u' : 'v'}_${shared ? 's' : 'g'}`,
    dispatchLayout: { x: [0] },
    dispatch: [L, 1, 1],
    variableNames: ['R'],
    workgroupSize: [JWG, 1, 1],
    uniforms: 'count : i32,',
    getUserCode: () => `
      const Q = ${q};
      const N = ${q - 1};
      const T = ${T};
      var<workgroup> rotated : u32;
      var<workgroup> sig : array<f32, ${q}>;
      var<workgroup> part : array<vec3<f32>, ${JWG}>;
      ${
        shared
          ? `var<workgroup> wa : array<f32, ${q * q}>;
      var<workgroup> wv : array<f32, ${q * q}>;`
          : ''
      }
      fn main(index : i32) {
        let lid = i32(localId.x);
        let m = min(${MATRIX}, uniforms.count - 1);
        let base = m * ${size};
        let vb = base + Q * Q;
        let sub = lid % T;
        let p0 = lid / T;
        for (var e = lid; e < Q * Q; e = e + ${JWG}) {
          ${A('e')} = R[m * Q * Q + e];
          ${V('e')} = select(0.0, 1.0, e / Q == e % Q);
        }
        ${barrier}
        for (var sweep = 0; sweep < ${MAX_SWEEPS}; sweep = sweep + 1) {
          if (lid == 0) { rotated = 0u; }
          workgroupBarrier();
          for (var r = 0; r < N; r = r + 1) {
            for (var pp = 0; pp < ${passes}; pp = pp + 1) {
              let p = pp * ${groups} + p0;
              let live = p < Q / 2;
              var i = N;
              var j = r;
              if (p > 0) { i = (r + p) % N; j = (r - p + N) % N; }
              var acc = vec3<f32>(0.0, 0.0, 0.0);
              if (live) {
                for (var k = sub; k < Q; k = k + T) {
                  let x = ${A('k * Q + i')};
                  let y = ${A('k * Q + j')};
                  acc = acc + vec3<f32>(x * x, y * y, x * y);
                }
              }
              part[lid] = acc;
              workgroupBarrier();
              var tot = vec3<f32>(0.0, 0.0, 0.0);
              for (var u = 0; u < T; u = u + 1) { tot = tot + part[p0 * T + u]; }
              let alpha = tot.x;
              let beta = tot.y;
              let gamma = tot.z;
              if (live && abs(gamma) > ${jacobiTolerance(q).toExponential()} * sqrt(alpha * beta)) {
                rotated = 1u;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = select(-1.0, 1.0, zeta >= 0.0) / (abs(zeta) + sqrt(1.0 + zeta * zeta));
                let c = 1.0 / sqrt(1.0 + t * t);
                let s = c * t;
                for (var k = sub; k < Q; k = k + T) {
                  let x = ${A('k * Q + i')};
                  let y = ${A('k * Q + j')};
                  ${A('k * Q + i')} = c * x - s * y;
                  ${A('k * Q + j')} = s * x + c * y;
                  let vx = ${V('k * Q + i')};
                  let vy = ${V('k * Q + j')};
                  ${V('k * Q + i')} = c * vx - s * vy;
                  ${V('k * Q + j')} = s * vx + c * vy;
                }
              }
              ${barrier}
            }
          }
          let any = workgroupUniformLoad(&rotated);
          if (any == 0u) { break; }
        }
        for (var j = lid; j < Q; j = j + ${JWG}) {
          var s = 0.0;
          for (var k = 0; k < Q; k = k + 1) { let x = ${A('k * Q + j')}; s = s + x * x; }
          sig[j] = sqrt(s);
        }
        workgroupBarrier();
        for (var j = lid; j < Q; j = j + ${JWG}) {
          let sj = sig[j];
          var rank = 0;
          for (var i = 0; i < Q; i = i + 1) {
            let si = sig[i];
            if (si > sj || (si == sj && i < j)) { rank = rank + 1; }
          }
          result[base + 3 * Q * Q + rank] = sj;
          let inv = select(0.0, 1.0 / sj, sj > 0.0);
          for (var k = 0; k < Q; k = k + 1) {
            result[base + 2 * Q * Q + k * Q + rank] = ${left ? `${A('k * Q + j')} * inv` : V('k * Q + j')};
          }
        }
      }`,
  };
}

interface CpuBackend {
  readSync(dataId: tf.DataId): ArrayLike<number>;
  makeTensorInfo(shape: number[], dtype: tf.DataType, values: Float32Array): tf.TensorInfo;
}

/** fitsShared, unless LORA_EVA_SHARED=0 (the storage-buffer programs, for tests). */
function shared(backend: unknown, q: number, count: number, extra = 0): boolean {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  return env?.LORA_EVA_SHARED !== '0' && fitsShared(backend as WebGPUBackend, q, count, extra);
}

function checkCount(L: number): void {
  if (L > MAX_MATRICES)
    throw new Error(`@lora/eva: a stack of ${L} matrices is over the ${MAX_MATRICES} one dispatch holds; split it`);
}

let registered = false;
function register(): void {
  if (registered) return;
  registered = true;
  const add = (
    kernelName: string,
    backendName: string,
    kernelFunc: (a: {
      inputs: Record<string, tf.TensorInfo>;
      backend: unknown;
      attrs: Record<string, unknown>;
    }) => tf.TensorInfo,
  ) => {
    if (!tf.getKernel(kernelName, backendName))
      tf.registerKernel({ kernelName, backendName, kernelFunc: kernelFunc as unknown as tf.KernelFunc });
  };
  add(CHOL, 'webgpu', ({ inputs, backend }) => {
    const G = inputs.G as tf.TensorInfo;
    const [L, q] = G.shape as [number, number, number];
    checkCount(L);
    return (backend as WebGPUBackend).runWebGPUProgram(choleskyProgram(L, q, shared(backend, q, 1)), [G], 'float32', [
      { type: 'int32', data: [L] },
    ]);
  });
  add(JACOBI, 'webgpu', ({ inputs, backend, attrs }) => {
    const R = inputs.R as tf.TensorInfo;
    const [L, q] = R.shape as [number, number, number];
    checkCount(L);
    return (backend as WebGPUBackend).runWebGPUProgram(
      jacobiProgram(L, q, attrs.left as boolean, shared(backend, q, 2, 4 * JWG)),
      [R],
      'float32',
      [{ type: 'int32', data: [L] }],
    );
  });
  add(CHOL, 'cpu', ({ inputs, backend }) => {
    const G = inputs.G as tf.TensorInfo;
    const [L, q] = G.shape as [number, number, number];
    const b = backend as CpuBackend;
    return b.makeTensorInfo([L, q, q], 'float32', choleskyInverseValues(b.readSync(G.dataId), L, q));
  });
  add(JACOBI, 'cpu', ({ inputs, backend, attrs }) => {
    const R = inputs.R as tf.TensorInfo;
    const [L, q] = R.shape as [number, number, number];
    const b = backend as CpuBackend;
    return b.makeTensorInfo(
      [L, 3 * q * q + q],
      'float32',
      jacobiValues(b.readSync(R.dataId), L, q, attrs.left as boolean),
    );
  });
}
