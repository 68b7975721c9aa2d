import type * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import { accumulateReflectors, applyReflectorLeft, makeReflector } from './householder';
import {
  type Matrix64,
  assertFinite,
  fromColumnMajor,
  isMatrix64,
  matrix64ToTensor,
  tensorToMatrix64,
  toColumnMajor,
} from './matrix64';

/** Options for {@link qr}. */
export interface QrOptions {
  /** `'reduced'` (default): Q is m×k and R k×n with k = min(m, n). `'complete'`: Q is m×m, R m×n. */
  mode?: 'reduced' | 'complete';
}

/** Result of {@link qr} on a Matrix64. */
export interface Qr64 {
  Q: Matrix64;
  R: Matrix64;
}

/** Result of {@link qr} on a tensor. The caller owns both tensors. */
export interface QrTensors {
  Q: tf.Tensor2D;
  R: tf.Tensor2D;
}

/**
 * Householder reflectors of a column-major m×n array, in place (R on and above the diagonal, the
 * reflectors' tails below, LAPACK's geqrf layout), and their τ. Q itself is not formed: see
 * {@link applyQ}.
 * @internal
 */
export function householderFactor(
  a: Float64Array,
  m: number,
  n: number,
): { w: Float64Array; taus: Float64Array; k: number } {
  const w = a;
  const k = Math.min(m, n);
  const taus = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const off = j * m + j;
    const { tau, beta } = makeReflector(w, off, m - j);
    taus[j] = tau;
    // apply to the trailing columns, with v[0] = 1 in place of the diagonal for the duration
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, tau, w, (j + 1) * m + j, m, n - j - 1);
    w[off] = beta;
  }
  return { w, taus, k };
}

/**
 * Q·X for the Q of {@link householderFactor} (m×k) and X given as its first k rows (k×p, row-major):
 * an m×p column-major result, O(m·k·p) — for p < k less than forming Q (O(m·k²)) and multiplying.
 * @internal
 */
export function applyQ(w: Float64Array, m: number, taus: Float64Array, x: Float64Array, p: number): Float64Array {
  const k = taus.length;
  const y = new Float64Array(m * p);
  for (let c = 0; c < p; c++) for (let i = 0; i < k; i++) y[c * m + i] = x[i * p + c] as number;
  for (let j = k - 1; j >= 0; j--) {
    const off = j * m + j;
    const saved = w[off] as number;
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, taus[j] as number, y, j, m, p);
    w[off] = saved;
  }
  return y;
}

/**
 * Householder QR in column-major float64. Returns Q (m×qCols) and R (rRows×n), both column-major,
 * with qCols = rRows = min(m, n) (reduced) or m (complete).
 * @internal
 */
export function householderQr(
  a: Float64Array,
  m: number,
  n: number,
  complete: boolean,
): { q: Float64Array; r: Float64Array; k: number } {
  const w = a; // overwritten: R on and above the diagonal, reflectors below
  const k = Math.min(m, n);
  const taus = new Float64Array(k);
  const betas = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const off = j * m + j;
    const { tau, beta } = makeReflector(w, off, m - j);
    taus[j] = tau;
    betas[j] = beta;
    // apply to the trailing columns, with v[0] = 1 in place of the diagonal for the duration
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, tau, w, (j + 1) * m + j, m, n - j - 1);
    w[off] = beta;
  }
  const qCols = complete ? m : k;
  const rRows = qCols;
  const r = new Float64Array(rRows * n);
  for (let j = 0; j < n; j++)
    for (let i = 0; i <= Math.min(j, rRows - 1); i++) r[j * rRows + i] = w[j * m + i] as number;
  const q = accumulateReflectors(w, m, taus, qCols);
  return { q, r, k };
}

/**
 * QR decomposition by Householder reflections: `a = Q·R`, Q with orthonormal columns, R upper
 * triangular (its diagonal may be negative, as LAPACK's and `torch.linalg.qr`'s may).
 * A Matrix64 gives Matrix64s (float64, synchronously); a tensor gives float32 tensors on the
 * active backend (computed in float64 on the CPU).
 *
 * @example
 * ```ts
 * const { Q, R } = qr(matrix64([[1, 2], [3, 4], [5, 6]]));           // Q 3×2, R 2×2
 * const t = await qr(tf.randomNormal([512, 16]) as tf.Tensor2D);      // tensors
 * ```
 */
export function qr(a: Matrix64, options?: QrOptions): Qr64;
export function qr(a: tf.Tensor2D, options?: QrOptions): Promise<QrTensors>;
export function qr(a: Matrix64 | tf.Tensor2D, options: QrOptions = {}): Qr64 | Promise<QrTensors> {
  const mode = options.mode ?? 'reduced';
  if (mode !== 'reduced' && mode !== 'complete')
    throw new LinalgError(`qr: mode '${mode}' is not 'reduced' or 'complete'`);
  if (isMatrix64(a)) return qr64(a, mode === 'complete');
  return (async () => {
    const m = await tensorToMatrix64(a, 'qr');
    const { Q, R } = qr64(m, mode === 'complete');
    return { Q: matrix64ToTensor(Q), R: matrix64ToTensor(R) };
  })();
}

function qr64(a: Matrix64, complete: boolean): Qr64 {
  assertFinite(a, 'qr');
  const { rows: m, cols: n } = a;
  const { q, r } = householderQr(toColumnMajor(a), m, n, complete);
  const qCols = complete ? m : Math.min(m, n);
  return { Q: fromColumnMajor(q, m, qCols), R: fromColumnMajor(r, qCols, n) };
}
