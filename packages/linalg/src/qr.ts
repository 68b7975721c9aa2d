import type * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import { accumulateReflectors, householderFactor } from './householder';
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
  // overwritten: R on and above the diagonal, reflectors below
  const { w, taus, k } = householderFactor(a, m, n);
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
