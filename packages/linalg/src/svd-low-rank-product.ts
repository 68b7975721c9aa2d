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
import { choleskyUpper, invertUpper } from './svd-low-rank';

/** Options of {@link svdOfLowRankSum} and {@link svdOfLowRankProduct}. */
export interface LowRankSvdOptions {
  /**
   * Return only the leading `rank` triplets (default: all min(m, n, R)). The vectors are then made
   * from the reflectors directly, O((m + n)·R·rank) instead of O((m + n)·R²): what a truncation back
   * to a LoRA rank needs.
   */
  rank?: number;
  /**
   * How the stacked factors are orthogonalised: `'householder'` (default; Householder QR, backward
   * stable for any input) or `'cholesky'`: the float64 Cholesky factor of each side's
   * column-equilibrated Gram matrix, Q = factors·R⁻¹ never formed (about half the work, in plain
   * dot products). It is taken only where that factor's κ (Frobenius) is at most 10⁴, so that Q is
   * orthonormal to about 10⁻⁸; otherwise (a zero column, nearly dependent factors, fewer rows than
   * columns) the Householder path runs instead, so the result is always that of an exact SVD.
   */
  qrMethod?: 'householder' | 'cholesky';
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

/** Σᵢ x[xo + i]·y[yo + i] over i < len, four at a time. */
function dotAt(x: Float64Array, xo: number, y: Float64Array, yo: number, len: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let i = 0;
  for (; i + 4 <= len; i += 4) {
    s0 += (x[xo + i] as number) * (y[yo + i] as number);
    s1 += (x[xo + i + 1] as number) * (y[yo + i + 1] as number);
    s2 += (x[xo + i + 2] as number) * (y[yo + i + 2] as number);
    s3 += (x[xo + i + 3] as number) * (y[yo + i + 3] as number);
  }
  for (; i < len; i++) s0 += (x[xo + i] as number) * (y[yo + i] as number);
  return s0 + s1 + s2 + s3;
}

/**
 * R (R×R upper triangular, row-major) with XᵀX = RᵀR for X (m×R, column-major), and R⁻¹: the float64
 * Cholesky factor R₁ of the Gram matrix of X·D⁻¹ (D the column norms), then R = R₁·D. Null where Q =
 * X·R⁻¹ would not be orthonormal to ~10⁻⁸: a zero column, a Cholesky that fails, or κ_F(R₁) > 10⁴.
 */
function choleskyFactor(x: Float64Array, m: number, R: number): { r: Float64Array; inv: Float64Array } | null {
  if (m < R) return null;
  const d = new Float64Array(R);
  for (let j = 0; j < R; j++) {
    const norm = Math.sqrt(dotAt(x, j * m, x, j * m, m));
    if (!(norm > 0) || !Number.isFinite(norm)) return null;
    d[j] = norm;
  }
  const g = new Float64Array(R * R);
  for (let a = 0; a < R; a++) {
    g[a * R + a] = 1;
    for (let c = a + 1; c < R; c++) {
      const v = dotAt(x, a * m, x, c * m, m) / ((d[a] as number) * (d[c] as number));
      g[a * R + c] = v;
      g[c * R + a] = v;
    }
  }
  const r1 = choleskyUpper(g, R);
  if (!r1) return null;
  const inv1 = invertUpper(r1, R);
  let fr = 0;
  let fi = 0;
  for (let i = 0; i < R * R; i++) {
    fr += (r1[i] as number) ** 2;
    fi += (inv1[i] as number) ** 2;
  }
  if (!(Math.sqrt(fr * fi) <= 1e4)) return null;
  // X = Q·R₁·D: R = R₁·D, R⁻¹ = D⁻¹·R₁⁻¹
  const r = new Float64Array(R * R);
  const inv = new Float64Array(R * R);
  for (let i = 0; i < R; i++)
    for (let j = i; j < R; j++) {
      r[i * R + j] = (r1[i * R + j] as number) * (d[j] as number);
      inv[i * R + j] = (inv1[i * R + j] as number) / (d[i] as number);
    }
  return { r, inv };
}

/**
 * Q·W for Q = X·R⁻¹ (X m×R column-major, `inv` = R⁻¹ upper triangular row-major) and W the first k
 * columns of `w` (R×`ld`, row-major; `transposed`: W = the first k rows of `w`, transposed): the m×k
 * result column-major, O(m·R·k).
 */
function liftThroughInverse(
  x: Float64Array,
  m: number,
  R: number,
  inv: Float64Array,
  w: Float64Array,
  ld: number,
  k: number,
  transposed: boolean,
): Float64Array {
  // T = R⁻¹·W (R×k)
  const t = new Float64Array(R * k);
  for (let a = 0; a < R; a++)
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let p = a; p < R; p++) s += (inv[a * R + p] as number) * (w[transposed ? j * ld + p : p * ld + j] as number);
      t[a * k + j] = s;
    }
  const out = new Float64Array(m * k);
  // four result columns a pass over X's columns, each of X's entries read once for the four
  let j = 0;
  for (; j + 4 <= k; j += 4) {
    const o0 = j * m;
    const o1 = o0 + m;
    const o2 = o1 + m;
    const o3 = o2 + m;
    for (let a = 0; a < R; a++) {
      const f0 = t[a * k + j] as number;
      const f1 = t[a * k + j + 1] as number;
      const f2 = t[a * k + j + 2] as number;
      const f3 = t[a * k + j + 3] as number;
      const xo = a * m;
      for (let i = 0; i < m; i++) {
        const v = x[xo + i] as number;
        out[o0 + i] = (out[o0 + i] as number) + f0 * v;
        out[o1 + i] = (out[o1 + i] as number) + f1 * v;
        out[o2 + i] = (out[o2 + i] as number) + f2 * v;
        out[o3 + i] = (out[o3 + i] as number) + f3 * v;
      }
    }
  }
  for (; j < k; j++) {
    const o = j * m;
    for (let a = 0; a < R; a++) {
      const f = t[a * k + j] as number;
      const xo = a * m;
      for (let i = 0; i < m; i++) out[o + i] = (out[o + i] as number) + f * (x[xo + i] as number);
    }
  }
  return out;
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
  if (options.qrMethod !== undefined && options.qrMethod !== 'householder' && options.qrMethod !== 'cholesky')
    throw new LinalgError(
      `svdOfLowRankSum: qrMethod ${JSON.stringify(options.qrMethod)} must be 'householder' or 'cholesky'`,
    );
  if (options.qrMethod === 'cholesky') {
    const fb = choleskyFactor(bc, m, R);
    const fa = fb && choleskyFactor(ac, n, R);
    if (fb && fa) {
      // Σ wᵢBᵢAᵢ = Q_b·(R_b·R_aᵀ)·Q_aᵀ; U = B·R_b⁻¹·Uc, V = Aᵀ·R_a⁻¹·Vc
      const core = svd64(
        matmul64({ rows: R, cols: R, data: fb.r }, { rows: R, cols: R, data: fa.r }, { transposeB: true }),
        false,
        'svdOfLowRankSum',
      );
      const U = fromColumnMajor(liftThroughInverse(bc, m, R, fb.inv, core.U.data, core.U.cols, k, false), m, k);
      const vCols = liftThroughInverse(ac, n, R, fa.inv, core.Vh.data, core.Vh.cols, k, true);
      return { U, S: core.S.slice(0, k), Vh: { rows: k, cols: n, data: vCols } };
    }
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
