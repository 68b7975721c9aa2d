import * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import type { LongRunOptions } from './long-run';
import { type Matrix64, assertFiniteTensor, isMatrix64, matrix64ToTensor, tensorToMatrix64 } from './matrix64';
import { svdBlocked } from './svd-blocked';
import { type Svd64, svd64 } from './svd-float64';
import { jacobiOnBackend, svdJacobi } from './svd-jacobi';

/** Options for {@link svd}. `signal`, `onProgress` and `method` apply to tensors only. */
export interface SvdOptions extends LongRunOptions {
  /** `false` (default): U is m×k and Vh k×n with k = min(m, n). `true`: U is m×m and Vh n×n. */
  fullMatrices?: boolean;
  /**
   * How a tensor is decomposed. `'backend'`: in float32 on the active backend (blocked Householder
   * bidiagonalisation, divide and conquer; on webgpu, unless `fullMatrices`, blocked one-sided
   * Jacobi in WGSL; singular values within about 1e-6·σ₁ of the exact ones).
   * `'float64'`: on the CPU in float64 (the accuracy reference; seconds at 512², minutes past 1024²).
   * `'auto'` (default): `'backend'` once min(m, n) reaches 128, `'float64'` below.
   */
  method?: 'auto' | 'backend' | 'float64';
}

/** From this min(m, n) on, `method: 'auto'` decomposes tensors on the backend. */
const BACKEND_FROM = 128;

export type { Svd64 } from './svd-float64';

/** Result of {@link svd} on a tensor. The caller owns all three tensors. */
export interface SvdTensors {
  U: tf.Tensor2D;
  S: tf.Tensor1D;
  Vh: tf.Tensor2D;
}

/**
 * Singular value decomposition `a = U·diag(S)·Vh` with S descending and non-negative, as
 * `torch.linalg.svd` (thin by default). A Matrix64 is decomposed in float64 (Householder
 * bidiagonalisation and implicit-shift QR; tall matrices QR-factored first) and gives Matrix64s
 * synchronously. A tensor gives float32 tensors on the active backend: from 128 on a side it is
 * decomposed there in float32 (blocked Householder bidiagonalisation with large matrix products,
 * the bidiagonal problem by divide and conquer; on webgpu, unless `fullMatrices`, blocked one-sided
 * Jacobi in WGSL; singular values within about 1e-6·σ₁), cancellable
 * with `signal` and reporting `onProgress`; smaller ones in float64 on the CPU (see `method`).
 *
 * @example
 * ```ts
 * const { U, S, Vh } = svd(matrix64([[3, 0], [4, 5]]));   // S = [6.708…, 2.236…]
 * const t = await svd(weight as tf.Tensor2D);              // a 4096² weight: seconds, on the backend
 * const exact = await svd(small as tf.Tensor2D, { method: 'float64' });
 * ```
 */
export function svd(a: Matrix64, options?: SvdOptions): Svd64;
export function svd(a: tf.Tensor2D, options?: SvdOptions): Promise<SvdTensors>;
export function svd(a: Matrix64 | tf.Tensor2D, options: SvdOptions = {}): Svd64 | Promise<SvdTensors> {
  if (isMatrix64(a)) return svd64(a, options.fullMatrices ?? false);
  return (async () => {
    const method = options.method ?? 'auto';
    if (method !== 'auto' && method !== 'backend' && method !== 'float64')
      throw new LinalgError(`svd: method '${String(method)}' is not 'auto', 'backend' or 'float64'`);
    if (a.rank !== 2) throw new LinalgError(`svd: expected a 2-D tensor, got shape [${a.shape.join(', ')}]`);
    const [m, n] = a.shape;
    const small = Math.min(m, n) < BACKEND_FROM;
    if (method === 'float64' || (method === 'auto' && small) || m === 0 || n === 0) {
      options.signal?.throwIfAborted();
      const r = svd64(await tensorToMatrix64(a, 'svd'), options.fullMatrices ?? false);
      return { U: matrix64ToTensor(r.U), S: tf.tensor1d(Float32Array.from(r.S)), Vh: matrix64ToTensor(r.Vh) };
    }
    await assertFiniteTensor(a, 'svd');
    // on webgpu the thin SVD is a blocked one-sided Jacobi in a few WGSL programs a step, where the
    // Householder path's thousands of small ops a panel cost more in dispatch than in arithmetic
    if (jacobiOnBackend() && !options.fullMatrices) return svdJacobi(a, options);
    return svdBlocked(a, options);
  })();
}
