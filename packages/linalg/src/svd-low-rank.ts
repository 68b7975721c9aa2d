import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { LinalgError } from './errors';
import {
  type Matrix64,
  assertFinite,
  fromColumnMajor,
  isMatrix64,
  matmul64,
  matrix64ToTensor,
  tensorToMatrix64,
  toColumnMajor,
} from './matrix64';
import { householderQr } from './qr';
import { svd64 } from './svd-float64';

/** Options for {@link svdLowRank}, as `torch.svd_lowrank(A, q, niter)`. */
export interface SvdLowRankOptions {
  /** Columns of the random sketch: a slight overestimate of the rank wanted. Default `min(6, m, n)`, as torch. */
  q?: number;
  /** Subspace (power) iterations. Default 2, as torch. */
  niter?: number;
  /**
   * Seed for the sketch `randn(n, q)`, drawn as `torch.manual_seed(seed); torch.randn(n, q)` would
   * on the CPU (so results are reproducible, and equal torch's CPU results up to rounding). Default 0.
   */
  seed?: number;
  /**
   * Precision of the sketch's normals, as torch draws them for an input of that dtype: `'float32'`
   * (default for tensors) or `'float64'` (default for Matrix64s). The two give different numbers.
   */
  sketchDtype?: 'float32' | 'float64';
}

/** Result of {@link svdLowRank} on a Matrix64: `a ≈ U·diag(S)·Vᵀ` (V, not Vh, as torch). */
export interface SvdLowRank64 {
  U: Matrix64;
  S: Float64Array;
  V: Matrix64;
}

/** Result of {@link svdLowRank} on a tensor. The caller owns all three tensors. */
export interface SvdLowRankTensors {
  U: tf.Tensor2D;
  S: tf.Tensor1D;
  V: tf.Tensor2D;
}

function settings(m: number, n: number, o: SvdLowRankOptions) {
  const q = o.q ?? Math.min(6, m, n);
  const niter = o.niter ?? 2;
  if (!Number.isInteger(q) || q < 1) throw new LinalgError(`svdLowRank: q = ${q} must be a positive integer`);
  if (m === 0 || n === 0) throw new LinalgError(`svdLowRank: the matrix is empty (${m}x${n})`);
  if (!Number.isInteger(niter) || niter < 0)
    throw new LinalgError(`svdLowRank: niter = ${niter} must be a non-negative integer`);
  // torch works on a tall matrix: it sketches aᵀ when a is wide, and swaps U and V at the end.
  return { q, niter, transposed: m < n, seed: o.seed ?? 0 };
}

/**
 * Orthonormal basis of the columns of a row-major rows×c matrix, row-major rows×min(rows, c):
 * as torch's reduced QR, a sketch wider than the matrix is tall keeps only `rows` columns.
 */
function orthonormalBasis(x: Matrix64): Matrix64 {
  const { q, k } = householderQr(toColumnMajor(x), x.rows, x.cols, false);
  return fromColumnMajor(q, x.rows, k);
}

/**
 * Randomized low-rank SVD (Halko, Martinsson & Tropp 2009, Algorithm 5.1) with torch.svd_lowrank's
 * semantics: a Gaussian sketch of `q` columns, `niter` subspace iterations with re-orthonormalisation,
 * then an exact SVD of the small projected matrix. Returns V, not Vh.
 *
 * For tensors, the products with `a` run on the active backend (the expensive part), while each
 * thin QR and the small SVD run in float64 on the CPU.
 *
 * @example
 * ```ts
 * const { U, S, V } = await svdLowRank(grad as tf.Tensor2D, { q: 32, niter: 4, seed: 0 }); // LoRA-GA
 * ```
 */
export function svdLowRank(a: Matrix64, options?: SvdLowRankOptions): SvdLowRank64;
export function svdLowRank(a: tf.Tensor2D, options?: SvdLowRankOptions): Promise<SvdLowRankTensors>;
export function svdLowRank(
  a: Matrix64 | tf.Tensor2D,
  options: SvdLowRankOptions = {},
): SvdLowRank64 | Promise<SvdLowRankTensors> {
  return isMatrix64(a) ? lowRank64(a, options) : lowRankTensor(a, options);
}

/**
 * Upper-triangular R with Rᵀ·R = G (Cholesky in float64), or null when G is not positive definite.
 * @internal
 */
export function choleskyUpper(g: Float64Array, k: number): Float64Array | null {
  const r = new Float64Array(k * k);
  for (let j = 0; j < k; j++) {
    let d = g[j * k + j] as number;
    for (let p = 0; p < j; p++) d -= (r[p * k + j] as number) ** 2;
    if (!(d > 0)) return null;
    const rjj = Math.sqrt(d);
    r[j * k + j] = rjj;
    for (let i = j + 1; i < k; i++) {
      let v = g[j * k + i] as number;
      for (let p = 0; p < j; p++) v -= (r[p * k + j] as number) * (r[p * k + i] as number);
      r[j * k + i] = v / rjj;
    }
  }
  return r;
}

/**
 * Inverse of an upper-triangular k×k matrix (row-major, float64).
 * @internal
 */
export function invertUpper(r: Float64Array, k: number): Float64Array {
  // back substitution by rows, X = R⁻¹ from the last row up: Xᵢ = (eᵢ − Σ_{p>i} Rᵢₚ·Xₚ) / Rᵢᵢ, each
  // update a contiguous stretch of a row (a column-by-column sweep strides k entries a step: here, on
  // 2 cores, 1.7 against 1.1 ms at k = 128 and 13.5 against 10.3 ms at k = 256)
  const x = new Float64Array(k * k);
  for (let i = k - 1; i >= 0; i--) {
    const row = i * k;
    x[row + i] = 1;
    for (let p = i + 1; p < k; p++) {
      const f = r[row + p] as number;
      if (f === 0) continue;
      const from = p * k;
      for (let c = p; c < k; c++) x[row + c] = (x[row + c] as number) - f * (x[from + c] as number);
    }
    const s = 1 / (r[row + i] as number);
    for (let c = i; c < k; c++) x[row + c] = (x[row + c] as number) * s;
  }
  return x;
}

/** The largest |GᵢⱼG − δᵢⱼ| of a k×k Gram matrix QᵀQ read back (row-major): how far Q is from orthonormal. */
export function orthogonalityDeviation(g: ArrayLike<number>, k: number, offset = 0): number {
  let dev = 0;
  for (let i = 0; i < k; i++)
    for (let j = 0; j < k; j++) dev = Math.max(dev, Math.abs((g[offset + i * k + j] as number) - (i === j ? 1 : 0)));
  return dev;
}

/**
 * QᵀQ on the backend (Qᵀ formed first where a product with a transposed operand is slow).
 * @internal
 */
export function gramTensor(q: tf.Tensor2D, explicitTranspose: boolean): tf.Tensor2D {
  return tf.tidy(() => (explicitTranspose ? tf.matMul(tf.transpose(q), q) : tf.matMul(q, q, true, false)));
}

/**
 * CholeskyQR2 on the backend whose final orthogonality check is left to the caller: Q = X·R₁⁻¹·R₂⁻¹
 * from two k×k Gram matrices read back (their Cholesky factors R₁, R₂ in float64 on the host); `check`
 * is QᵀQ on the backend, not read, for the caller to read with a later read-back and test with
 * {@link orthogonalityDeviation} (above 1e-5: Q is not to be trusted). `alongside`, when given, is
 * read back with the first Gram matrix, in the same round trip (`alongsideValues`). Null when a
 * Cholesky factorisation fails. The caller keeps x (and `alongside`).
 * @internal
 */
export async function choleskyQr2Deferred(
  x: tf.Tensor2D,
  explicitTranspose: boolean,
  alongside?: tf.Tensor,
): Promise<{ q: tf.Tensor2D; check: tf.Tensor2D; alongsideValues?: Float32Array } | null> {
  const [m, k] = x.shape;
  if (k > m) return null;
  let alongsideValues: Float32Array | undefined;
  let q: tf.Tensor2D = x;
  for (let pass = 0; pass < 2; pass++) {
    const g = gramTensor(q, explicitTranspose);
    // the first Gram matrix carries `alongside` in the same read-back
    const read =
      pass === 0 && alongside ? tf.tidy(() => tf.concat([tf.reshape(g, [-1]), tf.reshape(alongside, [-1])])) : g;
    const all = (await read.data()) as Float32Array;
    tf.dispose([g, read]);
    if (read !== g) alongsideValues = all.slice(k * k);
    const rPass = choleskyUpper(Float64Array.from(all.subarray(0, k * k)), k);
    if (!rPass?.every(Number.isFinite)) {
      if (q !== x) q.dispose();
      return null;
    }
    const rInv = tf.tensor2d(Float32Array.from(invertUpper(rPass, k)), [k, k]);
    const next = tf.matMul(q, rInv) as tf.Tensor2D;
    rInv.dispose();
    if (q !== x) q.dispose();
    q = next;
  }
  return {
    q,
    check: gramTensor(q, explicitTranspose),
    ...(alongsideValues ? { alongsideValues } : {}),
  };
}

/**
 * CholeskyQR2 on the backend: Q = X·R⁻¹ with RᵀR = XᵀX, twice. Only k×k Gram matrices travel to
 * the CPU (for a float64 Cholesky), so a GPU keeps the tall sketch. In float32 this is reliable up to
 * a condition number of about 10³; beyond (Cholesky fails, or QᵀQ strays from I by more than 1e-5)
 * it returns null and the caller falls back to Householder. The caller keeps ownership of x.
 */
async function choleskyQr2(x: tf.Tensor2D, explicitTranspose: boolean): Promise<tf.Tensor2D | null> {
  const done = await choleskyQr2Deferred(x, explicitTranspose);
  if (!done) return null;
  const g = await done.check.data();
  done.check.dispose();
  if (!(orthogonalityDeviation(g, x.shape[1]) < 1e-5)) {
    done.q.dispose();
    return null;
  }
  return done.q;
}

/**
 * An orthonormal basis of x's columns as a tensor: CholeskyQR2 with the Gram matrices on the backend
 * (no large read-back), or, when x is too ill-conditioned for that in float32, Householder in float64
 * on the CPU. Disposes x.
 * @internal
 */
export async function orthonormalizeTensor(x: tf.Tensor2D, explicitTranspose: boolean): Promise<tf.Tensor2D> {
  const fast = await choleskyQr2(x, explicitTranspose);
  if (fast) {
    x.dispose();
    return fast;
  }
  const [r, c] = x.shape;
  const values = await x.data();
  x.dispose();
  const qm = orthonormalBasis({ rows: r, cols: c, data: Float64Array.from(values as Float32Array) });
  return tf.tensor2d(Float32Array.from(qm.data), [qm.rows, qm.cols]);
}

function lowRank64(a: Matrix64, options: SvdLowRankOptions): SvdLowRank64 {
  assertFinite(a, 'svdLowRank');
  const { rows: m, cols: n } = a;
  const { q, niter, transposed, seed } = settings(m, n, options);
  // Work on M = aᵀ when torch does; M is rows×cols.
  const M = transposed ? { rows: n, cols: m, data: toColumnMajor(a) } : a;
  const g = new Generator(seed);
  const R: Matrix64 = {
    rows: M.cols,
    cols: q,
    data:
      (options.sketchDtype ?? 'float64') === 'float64'
        ? g.fillNormal64(new Float64Array(M.cols * q))
        : Float64Array.from(g.fillNormal(new Float32Array(M.cols * q))),
  };
  let Q = orthonormalBasis(matmul64(M, R));
  for (let i = 0; i < niter; i++) {
    Q = orthonormalBasis(matmul64(M, Q, { transposeA: true }));
    Q = orthonormalBasis(matmul64(M, Q));
  }
  // The projection of a onto the basis, kept tall: a·Q (m×k) when sketching aᵀ, (Qᵀ·a)ᵀ (n×k) otherwise.
  const tall = transposed ? matmul64(a, Q) : matmul64(a, Q, { transposeA: true });
  const small = svd64(tall, false, 'svdLowRank'); // tall = U'·S·V'ᵀ
  const lifted = matmul64(Q, small.Vh, { transposeB: true }); // Q·V'
  // sketching aᵀ: a ≈ U'·S·(Q·V')ᵀ; otherwise aᵀ ≈ U'·S·(Q·V')ᵀ, i.e. a ≈ (Q·V')·S·U'ᵀ
  return transposed ? { U: small.U, S: small.S, V: lifted } : { U: lifted, S: small.S, V: small.U };
}

async function lowRankTensor(a: tf.Tensor2D, options: SvdLowRankOptions): Promise<SvdLowRankTensors> {
  if (a.rank !== 2) throw new LinalgError(`svdLowRank: expected a 2-D tensor, got shape [${a.shape.join(', ')}]`);
  const [m, n] = a.shape;
  const { q, niter, transposed, seed } = settings(m, n, options);
  const cols = transposed ? m : n; // columns of M (= aᵀ when transposed)
  // aᵀ·x: on wasm as (xᵀ·a)ᵀ with explicit transposes of the thin factors, because its matMul with a
  // transpose flag is ~11× slower for a 4096² operand; elsewhere (webgpu, cpu, tensorflow) the flag is
  // the fast path (on the H200 the explicit form cost 30 ms more per svdLowRank).
  const flagsAreSlow = tf.getBackend() === 'wasm';
  const aTimes = (x: tf.Tensor2D, aT: boolean) =>
    (aT
      ? flagsAreSlow
        ? tf.tidy(() => tf.transpose(tf.matMul(tf.transpose(x), a)))
        : tf.matMul(a, x, true, false)
      : tf.matMul(a, x)) as tf.Tensor2D;
  // M·X and Mᵀ·X without forming M = aᵀ (transposed) or a.
  const times = (x: tf.Tensor2D, mT: boolean) => aTimes(x, transposed !== mT);
  // Each thin QR: CholeskyQR2 with the Gram matrices on the backend (no large read-back), or, when
  // the sketch is too ill-conditioned for that in float32, Householder in float64 on the CPU.
  const basis = (x: tf.Tensor2D) => orthonormalizeTensor(x, flagsAreSlow);
  const g = new Generator(seed);
  const normals =
    (options.sketchDtype ?? 'float32') === 'float32'
      ? g.fillNormal(new Float32Array(cols * q))
      : Float32Array.from(g.fillNormal64(new Float64Array(cols * q)));
  const R = tf.tensor2d(normals, [cols, q]);
  let Q = await basis(times(R, false));
  R.dispose();
  for (let i = 0; i < niter; i++) {
    const Qt = await basis(times(Q, true));
    Q.dispose();
    Q = await basis(times(Qt, false));
    Qt.dispose();
  }
  // The projection of a onto the basis, kept tall: a·Q (m×k) when sketching aᵀ, (Qᵀ·a)ᵀ = aᵀ·Q (n×k) otherwise.
  const projected = aTimes(Q, !transposed);
  const small = svd64(await tensorToMatrix64(projected, 'svdLowRank'), false, 'svdLowRank');
  projected.dispose();
  const left = matrix64ToTensor(small.U);
  const vh = matrix64ToTensor(small.Vh);
  const S = tf.tensor1d(Float32Array.from(small.S));
  const lifted = tf.tidy(() => tf.matMul(Q, tf.transpose(vh))) as tf.Tensor2D; // Q·V'
  tf.dispose([Q, vh]);
  return transposed ? { U: left, S, V: lifted } : { U: lifted, S, V: left };
}
