import type * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import { safeNorm } from './householder';
import { type Matrix64, assertFinite, isMatrix64, tensorToMatrix64, toColumnMajor } from './matrix64';
import { svdTall } from './svd-float64';

function norm64(a: Matrix64, ord: 'fro' | 2): number {
  if (ord === 'fro') return safeNorm(a.data, 0, a.data.length);
  assertFinite(a, 'norm');
  if (a.rows === 0 || a.cols === 0) return 0;
  // The spectral norm is the largest singular value; vectors are not needed.
  const tall = a.rows >= a.cols;
  const m = tall ? a.rows : a.cols;
  const n = tall ? a.cols : a.rows;
  const cm = tall ? toColumnMajor(a) : Float64Array.from(a.data);
  return svdTall(cm, m, n, false, 'norm').s[0] as number;
}

/**
 * Matrix norm, as `torch.linalg.matrix_norm(a, ord)`: `'fro'` (default) or `2` (largest singular
 * value). Computed in float64, without overflow for large entries; returns a number either way.
 *
 * @example
 * ```ts
 * norm(matrix64([[3, 0], [0, 4]]));     // 5
 * norm(matrix64([[3, 0], [0, 4]]), 2);  // 4
 * ```
 */
export function norm(a: Matrix64, ord?: 'fro' | 2): number;
export function norm(a: tf.Tensor2D, ord?: 'fro' | 2): Promise<number>;
export function norm(a: Matrix64 | tf.Tensor2D, ord: 'fro' | 2 = 'fro'): number | Promise<number> {
  if (ord !== 'fro' && ord !== 2) throw new LinalgError(`norm: ord ${JSON.stringify(ord)} is not 'fro' or 2`);
  if (isMatrix64(a)) return norm64(a, ord);
  return tensorToMatrix64(a, 'norm').then((m) => norm64(m, ord));
}
