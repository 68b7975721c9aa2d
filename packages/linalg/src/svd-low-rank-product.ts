import * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import {
  type Matrix64,
  assertFinite,
  fromColumnMajor,
  isMatrix64,
  matmul64,
  matrix64ToTensor,
  tensorToMatrix64,
} from './matrix64';
import { applyQ, householderFactor } from './householder';
import type { SvdTensors } from './svd';
import { type Svd64, svd64 } from './svd-float64';

/** Options of {@link svdOfLowRankSum} and {@link svdOfLowRankProduct}. */
export interface LowRankSvdOptions {
  /**
   * Return only the leading `rank` triplets (default: all min(m, n, R)). The vectors are then made
   * from the reflectors directly, O((m + n)·R·rank) instead of O((m + n)·R²): what a truncation back
   * to a LoRA rank needs.
   */
  rank?: number;
}

/** One term wᵢ·Bᵢ·Aᵢ of {@link svdOfLowRankSum}: B is m×rᵢ, A is rᵢ×n (a LoRA update's layout). */
export interface LowRankTerm<T extends Matrix64 | tf.Tensor2D> {
  b: T;
  a: T;
  /** Default 1. */
  weight?: number;
}

function shapeOf(x: Matrix64 | tf.Tensor2D): [number, number] {
  if (isMatrix64(x)) return [x.rows, x.cols];
  if (x.rank !== 2) throw new LinalgError(`svdOfLowRankSum: expected 2-D factors, got shape [${x.shape.join(', ')}]`);
  return [x.shape[0], x.shape[1]];
}

/**
 * With [w₁B₁ … wₖBₖ] = Q_b·R_b and [A₁; …; Aₖ]ᵀ = Q_a·R_a, Σ wᵢ·Bᵢ·Aᵢ = Q_b·(R_b·R_aᵀ)·Q_aᵀ: the SVD of
 * the small core gives every nonzero singular triplet, at O((m + n)·R²) in float64.
 */
function lowRankSum64(terms: LowRankTerm<Matrix64>[], options: LowRankSvdOptions = {}): Svd64 {
  if (terms.length === 0) throw new LinalgError('svdOfLowRankSum: no terms; pass at least one {b, a}');
  const [m] = shapeOf(terms[0]?.b as Matrix64);
  const [, n] = shapeOf(terms[0]?.a as Matrix64);
  let R = 0;
  terms.forEach((t, i) => {
    const [bm, br] = shapeOf(t.b);
    const [ar, an] = shapeOf(t.a);
    if (bm !== m || an !== n || br !== ar)
      throw new LinalgError(
        `svdOfLowRankSum: term ${i} has B ${bm}x${br} and A ${ar}x${an}; every B must be ${m}xr and its A rx${n} with the same r`,
      );
    const w = t.weight ?? 1;
    if (!Number.isFinite(w))
      throw new LinalgError(`svdOfLowRankSum: term ${i} has weight ${w}; weights must be finite`);
    assertFinite(t.b, 'svdOfLowRankSum');
    assertFinite(t.a, 'svdOfLowRankSum');
    R += br;
  });
  const full = Math.min(m, n, R);
  if (options.rank !== undefined && !(Number.isInteger(options.rank) && options.rank >= 1))
    throw new LinalgError(
      `svdOfLowRankSum: rank ${String(options.rank)} must be a positive integer (or left out for all triplets)`,
    );
  const k = Math.min(full, options.rank ?? full);
  if (k === 0)
    return {
      U: { rows: m, cols: 0, data: new Float64Array(0) },
      S: new Float64Array(0),
      Vh: { rows: 0, cols: n, data: new Float64Array(0) },
    };
  // column-major [w₁B₁ … wₖBₖ] (m×R) and [A₁; …; Aₖ]ᵀ (n×R): column j of Aᵀ is row j of A
  const bc = new Float64Array(m * R);
  const ac = new Float64Array(n * R);
  let off = 0;
  for (const t of terms) {
    const r = t.b.cols;
    const w = t.weight ?? 1;
    for (let j = 0; j < r; j++) {
      for (let i = 0; i < m; i++) bc[(off + j) * m + i] = w * (t.b.data[i * r + j] as number);
      ac.set(t.a.data.subarray(j * n, (j + 1) * n), (off + j) * n);
    }
    off += r;
  }
  const qb = householderFactor(bc, m, R);
  const qa = householderFactor(ac, n, R);
  // the R factors (kb×R, ka×R, upper triangular) and the core R_b·R_aᵀ (kb×ka)
  const upper = (w: Float64Array, rows: number, kk: number) => {
    const r = new Float64Array(kk * R);
    for (let i = 0; i < kk; i++) for (let j = i; j < R; j++) r[i * R + j] = w[j * rows + i] as number;
    return { rows: kk, cols: R, data: r };
  };
  const core = svd64(
    matmul64(upper(qb.w, m, qb.k), upper(qa.w, n, qa.k), { transposeB: true }),
    false,
    'svdOfLowRankSum',
  );
  // U = Q_b·Uc[:, :k] and V = Q_a·Vc[:, :k], from the reflectors
  const c = core.U.cols;
  const uc = new Float64Array(qb.k * k);
  for (let i = 0; i < qb.k; i++) for (let j = 0; j < k; j++) uc[i * k + j] = core.U.data[i * c + j] as number;
  const vc = new Float64Array(qa.k * k);
  for (let i = 0; i < qa.k; i++) for (let j = 0; j < k; j++) vc[i * k + j] = core.Vh.data[j * qa.k + i] as number;
  const U = fromColumnMajor(applyQ(qb.w, m, qb.taus, uc, k), m, k);
  const vCols = applyQ(qa.w, n, qa.taus, vc, k);
  // Vh (k×n, row-major) is V's column-major layout as it stands
  return { U, S: core.S.slice(0, k), Vh: { rows: k, cols: n, data: vCols } };
}

/**
 * The exact thin SVD of a sum of low-rank products Σ wᵢ·Bᵢ·Aᵢ (such as a weighted combination of
 * LoRA updates), from the factors alone: QR of the stacked factors and the SVD of an R×R core,
 * R = Σ rᵢ. Returns min(m, n, R) triplets with S descending; the rest of the sum's singular values
 * are zero. Matrix64 terms give Matrix64s; tensor terms give float32 tensors on the active backend,
 * computed in float64 (the caller disposes them).
 *
 * @example
 * ```ts
 * // the SVD of 0.5·B₁A₁ + 1.5·B₂A₂ (4096×4096, rank ≤ 32) in milliseconds
 * const { U, S, Vh } = await svdOfLowRankSum([{ b: b1, a: a1, weight: 0.5 }, { b: b2, a: a2, weight: 1.5 }]);
 * // only the leading 16 (a merge truncated back to r = 16)
 * const top = await svdOfLowRankSum([{ b: b1, a: a1 }, { b: b2, a: a2 }], { rank: 16 });
 * ```
 */
export function svdOfLowRankSum(terms: LowRankTerm<Matrix64>[], options?: LowRankSvdOptions): Svd64;
export function svdOfLowRankSum(terms: LowRankTerm<tf.Tensor2D>[], options?: LowRankSvdOptions): Promise<SvdTensors>;
export function svdOfLowRankSum(
  terms: LowRankTerm<Matrix64>[] | LowRankTerm<tf.Tensor2D>[],
  options: LowRankSvdOptions = {},
): Svd64 | Promise<SvdTensors> {
  if (terms.length === 0 || isMatrix64(terms[0]?.b)) return lowRankSum64(terms as LowRankTerm<Matrix64>[], options);
  return (async () => {
    const read: LowRankTerm<Matrix64>[] = [];
    for (const t of terms as LowRankTerm<tf.Tensor2D>[]) {
      if (isMatrix64(t.b) || isMatrix64(t.a))
        throw new LinalgError('svdOfLowRankSum: the terms mix Matrix64s and tensors; pass one kind only');
      shapeOf(t.b);
      shapeOf(t.a);
      read.push({
        b: await tensorToMatrix64(t.b, 'svdOfLowRankSum'),
        a: await tensorToMatrix64(t.a, 'svdOfLowRankSum'),
        weight: t.weight,
      });
    }
    const r = lowRankSum64(read, options);
    return { U: matrix64ToTensor(r.U), S: tf.tensor1d(Float32Array.from(r.S)), Vh: matrix64ToTensor(r.Vh) };
  })();
}

/**
 * The exact thin SVD of the product B·A (B m×r, A r×n) from its factors: {@link svdOfLowRankSum}
 * with one term. Returns min(m, n, r) triplets.
 *
 * @example
 * ```ts
 * const { U, S, Vh } = await svdOfLowRankProduct(loraB, loraA);   // ΔW/scaling = B·A, never formed
 * ```
 */
export function svdOfLowRankProduct(b: Matrix64, a: Matrix64, options?: LowRankSvdOptions): Svd64;
export function svdOfLowRankProduct(b: tf.Tensor2D, a: tf.Tensor2D, options?: LowRankSvdOptions): Promise<SvdTensors>;
export function svdOfLowRankProduct(
  b: Matrix64 | tf.Tensor2D,
  a: Matrix64 | tf.Tensor2D,
  options: LowRankSvdOptions = {},
): Svd64 | Promise<SvdTensors> {
  if (isMatrix64(b) !== isMatrix64(a))
    throw new LinalgError('svdOfLowRankProduct: pass two Matrix64s or two tensors, not one of each');
  return isMatrix64(b)
    ? svdOfLowRankSum([{ b, a: a as Matrix64 }], options)
    : svdOfLowRankSum([{ b: b as tf.Tensor2D, a: a as tf.Tensor2D }], options);
}
