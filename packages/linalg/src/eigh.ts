import * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import { EPS, rotateColumns, swapColumns } from './rotations';
import { applyReflectorLeft, makeReflector } from './householder';
import { eighBlocked } from './eigh-blocked';
import type { LongRunOptions } from './long-run';
import {
  type Matrix64,
  assertFinite,
  assertFiniteTensor,
  fromColumnMajor,
  isMatrix64,
  matrix64ToTensor,
  tensorToMatrix64,
} from './matrix64';

/** Result of {@link eigh} on a Matrix64: `a = vectors·diag(values)·vectorsᵀ`, values ascending. */
export interface Eigh64 {
  values: Float64Array;
  vectors: Matrix64;
}

/** Options of {@link eigh} on a tensor. */
export interface EighOptions extends LongRunOptions {
  /**
   * `'backend'`: float32 on the active backend (blocked Householder tridiagonalisation, divide and
   * conquer; eigenvalues within about 1e-6·‖A‖ of the exact ones). `'float64'`: on the CPU in float64
   * (the reference; slow past a few hundred rows). `'auto'` (default): `'backend'` from 128 rows on.
   */
  method?: 'auto' | 'backend' | 'float64';
}

/** Result of {@link eigh} on a tensor. The caller owns both tensors. */
export interface EighTensors {
  values: tf.Tensor1D;
  vectors: tf.Tensor2D;
}

/**
 * Symmetric eigendecomposition of a column-major n×n matrix (only its lower triangle is read):
 * Householder tridiagonalisation, then implicit symmetric QR with Wilkinson shifts.
 * @internal
 */
export function symmetricEigen(
  a: Float64Array,
  n: number,
  wantVectors: boolean,
  fn = 'eigh',
): { values: Float64Array; vectors: Float64Array | null } {
  const w = a;
  const diag = new Float64Array(n);
  const off = new Float64Array(Math.max(n - 1, 0));
  const taus = new Float64Array(n);
  const p = new Float64Array(n);
  // Tridiagonalise: for each column k, a reflector H on rows k+1.. makes A ← H·A·H.
  for (let k = 0; k < n - 2; k++) {
    const vo = k * n + k + 1;
    const len = n - k - 1;
    const { tau, beta } = makeReflector(w, vo, len);
    taus[k] = tau;
    off[k] = beta;
    diag[k] = w[k * n + k] as number;
    if (tau === 0) continue;
    w[vo] = 1;
    // p = τ·A22·v (A22 symmetric: use full columns of the trailing block, kept symmetric below)
    p.fill(0, 0, len);
    for (let j = 0; j < len; j++) {
      const vj = w[vo + j] as number;
      const co = (k + 1 + j) * n + k + 1;
      for (let i = 0; i < len; i++) p[i] = (p[i] as number) + vj * (w[co + i] as number);
    }
    let pv = 0;
    for (let i = 0; i < len; i++) {
      p[i] = tau * (p[i] as number);
      pv += (p[i] as number) * (w[vo + i] as number);
    }
    // q = p − (τ/2)(pᵀv)·v ; A22 ← A22 − v·qᵀ − q·vᵀ
    const half = (tau / 2) * pv;
    for (let i = 0; i < len; i++) p[i] = (p[i] as number) - half * (w[vo + i] as number);
    for (let j = 0; j < len; j++) {
      const vj = w[vo + j] as number;
      const qj = p[j] as number;
      const co = (k + 1 + j) * n + k + 1;
      for (let i = 0; i < len; i++)
        w[co + i] = (w[co + i] as number) - (w[vo + i] as number) * qj - (p[i] as number) * vj;
    }
  }
  if (n >= 2) {
    diag[n - 2] = w[(n - 2) * n + n - 2] as number;
    off[n - 2] = w[(n - 2) * n + n - 1] as number;
  }
  if (n >= 1) diag[n - 1] = w[(n - 1) * n + n - 1] as number;

  let z: Float64Array | null = null;
  if (wantVectors) {
    z = new Float64Array(n * n);
    for (let i = 0; i < n; i++) z[i * n + i] = 1;
    for (let k = n - 3; k >= 0; k--) {
      const vo = k * n + k + 1;
      const len = n - k - 1;
      applyReflectorLeft(w, vo, len, taus[k] as number, z, (k + 1) * n + k + 1, n, len);
    }
  }

  tridiagonalQr(diag, off, z, n, fn);
  return { values: diag, vectors: z };
}

/**
 * Implicit symmetric QR with Wilkinson shifts on the tridiagonal (diag, off) in place: diag ends as
 * the eigenvalues ascending. Each rotation is applied to the columns of z (n columns of `ld` entries
 * each, column-major), so z = I gives the eigenvectors and z = e₁ᵀ (`ld` 1) only their first entries.
 */
function tridiagonalQr(diag: Float64Array, off: Float64Array, z: Float64Array | null, ld: number, fn: string): void {
  const n = diag.length;
  const maxSteps = 50 * n + 100;
  let steps = 0;
  let q = n - 1;
  while (q > 0) {
    for (let i = 0; i < q; i++) {
      if (Math.abs(off[i] as number) <= EPS * (Math.abs(diag[i] as number) + Math.abs(diag[i + 1] as number)))
        off[i] = 0;
    }
    while (q > 0 && off[q - 1] === 0) q--;
    if (q === 0) break;
    let lo = q - 1;
    while (lo > 0 && off[lo - 1] !== 0) lo--;
    if (++steps > maxSteps)
      throw new LinalgError(
        `${fn}: the tridiagonal QR iteration did not converge in ${maxSteps} steps (block ${lo}..${q} of ${n})`,
      );
    // Wilkinson shift: the eigenvalue of the trailing 2×2 closer to its last diagonal entry.
    const d = ((diag[q - 1] as number) - (diag[q] as number)) / 2;
    const b = off[q - 1] as number;
    const mu = (diag[q] as number) - (b * b) / (d + (d >= 0 ? 1 : -1) * Math.hypot(d, b));
    let x = (diag[lo] as number) - mu;
    let zz = off[lo] as number;
    for (let k = lo; k < q; k++) {
      const r = Math.hypot(x, zz);
      const c = r === 0 ? 1 : x / r;
      const s = r === 0 ? 0 : zz / r;
      if (k > lo) off[k - 1] = r;
      const ak = diag[k] as number;
      const ak1 = diag[k + 1] as number;
      const bk = off[k] as number;
      diag[k] = c * c * ak + 2 * c * s * bk + s * s * ak1;
      diag[k + 1] = s * s * ak - 2 * c * s * bk + c * c * ak1;
      off[k] = c * s * (ak1 - ak) + (c * c - s * s) * bk;
      if (z) rotateColumns(z, ld, k, k + 1, c, s);
      if (k < q - 1) {
        x = off[k] as number;
        zz = s * (off[k + 1] as number);
        off[k + 1] = c * (off[k + 1] as number);
      }
    }
  }
  // ascending order
  for (let i = 0; i < n - 1; i++) {
    let best = i;
    for (let j = i + 1; j < n; j++) if ((diag[j] as number) < (diag[best] as number)) best = j;
    if (best !== i) {
      const t = diag[i] as number;
      diag[i] = diag[best] as number;
      diag[best] = t;
      if (z) swapColumns(z, ld, i, best);
    }
  }
}

/**
 * Eigenvalues (ascending) of the symmetric tridiagonal matrix with diagonal `diag` and off-diagonal
 * `off`, and the first entry of each unit eigenvector: the Gauss rule of a Jacobi matrix (nodes, and
 * weights = first entries squared, Golub–Welsch) in O(n²), where the full eigendecomposition costs
 * O(n³). The inputs are not changed.
 * @internal
 */
export function tridiagonalEigenFirst(
  diag: ArrayLike<number>,
  off: ArrayLike<number>,
  fn = 'eigh',
): { values: Float64Array; first: Float64Array } {
  const n = diag.length;
  if (off.length < n - 1)
    throw new LinalgError(`${fn}: a tridiagonal of ${n} needs ${n - 1} off-diagonal entries, got ${off.length}`);
  const d = Float64Array.from(diag);
  const e = Float64Array.from({ length: Math.max(n - 1, 0) }, (_, i) => off[i] as number);
  const first = new Float64Array(n);
  if (n > 0) first[0] = 1;
  tridiagonalQr(d, e, first, 1, fn);
  return { values: d, first };
}

/**
 * Eigenvalues and eigenvectors of a real symmetric matrix, as `torch.linalg.eigh`: values ascending,
 * vectors in the columns, `a = V·diag(values)·Vᵀ`. Only the lower triangle is read (torch's
 * default `UPLO='L'`). A Matrix64 gives float64 results; a tensor gives float32 tensors, computed
 * from 128 rows on in float32 on the active backend (blocked tridiagonalisation, divide and conquer;
 * cancellable with `signal`, with `onProgress`), below in float64 on the CPU (see `method`).
 *
 * @example
 * ```ts
 * const { values, vectors } = eigh(matrix64([[2, 1], [1, 2]])); // values [1, 3]
 * const big = await eigh(covariance as tf.Tensor2D);            // 4096²: on the backend
 * ```
 */
export function eigh(a: Matrix64): Eigh64;
export function eigh(a: tf.Tensor2D, options?: EighOptions): Promise<EighTensors>;
export function eigh(a: Matrix64 | tf.Tensor2D, options: EighOptions = {}): Eigh64 | Promise<EighTensors> {
  if (isMatrix64(a)) return eigh64(a);
  return (async () => {
    const method = options.method ?? 'auto';
    if (method !== 'auto' && method !== 'backend' && method !== 'float64')
      throw new LinalgError(`eigh: method '${String(method)}' is not 'auto', 'backend' or 'float64'`);
    if (a.rank !== 2 || a.shape[0] !== a.shape[1])
      throw new LinalgError(`eigh: expected a square matrix, got shape [${a.shape.join(', ')}]`);
    if (method === 'float64' || (method === 'auto' && a.shape[0] < 128) || a.shape[0] === 0) {
      options.signal?.throwIfAborted();
      const r = eigh64(await tensorToMatrix64(a, 'eigh'));
      return { values: tf.tensor1d(Float32Array.from(r.values)), vectors: matrix64ToTensor(r.vectors) };
    }
    await assertFiniteTensor(tf.tidy(() => tf.linalg.bandPart(a, -1, 0)) as tf.Tensor2D, 'eigh', true);
    return eighBlocked(a, options);
  })();
}

function eigh64(a: Matrix64): Eigh64 {
  if (a.rows !== a.cols) throw new LinalgError(`eigh: expected a square matrix, got ${a.rows}x${a.cols}`);
  assertFinite(a, 'eigh');
  const n = a.rows;
  // Column-major copy of the lower triangle, mirrored (row-major lower = column-major upper).
  const w = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j <= i; j++) {
      const v = a.data[i * n + j] as number;
      w[j * n + i] = v;
      w[i * n + j] = v;
    }
  const { values, vectors } = symmetricEigen(w, n, true);
  return { values, vectors: fromColumnMajor(vectors as Float64Array, n, n) };
}
