import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, matrix64, svd, svdOfLowRankProduct, transpose64 } from '@lora/linalg';
import { type DiagonalPlusLowRank, topSingularTriplets } from './top-singular';
import type { WeightSvd } from './weight-svd-cache';

/**
 * One layer's problem, in the layout PEFT computes in (the base weight as stored, as a matrix):
 * W (m×n, through its SVD) and ΔW = s·L·R with L m×r and R r×n.
 */
export interface MatrixProblem {
  m: number;
  n: number;
  weight: WeightSvd;
  left: Matrix64;
  right: Matrix64;
  scaling: number;
}

/** W + ΔW's leading directions and how close each is to W's: what the thresholds are applied to. */
export interface MatrixAnalysis {
  /**
   * For each leading direction i < min(topK, k): max_j |⟨u_i(W + ΔW), u_j(W)⟩| — or, when
   * `cosineBound` is true, an upper bound on it (found without W's SVD, below the threshold).
   */
  cosine: Float64Array;
  /** Whether `cosine` holds upper bounds (the certified path) rather than the cosines themselves. */
  cosineBound: boolean;
  /** W + ΔW's singular values of those directions. */
  singularValues: Float64Array;
  /** Their left (m×t) and right (n×t) singular vectors. */
  u: Matrix64;
  v: Matrix64;
  /**
   * How the triplets were found: block Lanczos on the core (its last space's dimension, the cycles), a
   * dense SVD of the core, or subspace iteration on W + ΔW itself (its iterations) with exact cosines
   * from W's SVD ('sum') or certified bounds without it ('certified', with the Lanczos steps).
   */
  method:
    | { kind: 'krylov'; dimension: number; cycles: number }
    | { kind: 'dense'; size: [number, number] }
    | { kind: 'sum'; iterations: number }
    | { kind: 'certified'; iterations: number; lanczosSteps: number };
}

/** What one layer's reduction found and made. */
export interface MatrixReduction {
  analysis: MatrixAnalysis;
  /** The directions whose cosine is below the threshold (PEFT's `intruder_idcs`). */
  intruders: number[];
  /**
   * The new factors L′ (m×r) and R′ (r×n) with (W + ΔW_mitigated − W)/s = L′·R′ truncated to rank r,
   * √S in each (PEFT's balanced split); null when there are no intruders (the old factors stand).
   */
  factors: { left: Matrix64; right: Matrix64 } | null;
}

/**
 * An orthonormal basis P of the part of `residual`'s columns outside W's singular subspace (already
 * projected out), with `residual` = P·C: its thin SVD, directions of no weight dropped.
 */
function complement(residual: Matrix64): { basis: Matrix64; coef: Matrix64 } {
  const { U, S, Vh } = svd(residual);
  const top = S[0] ?? 0;
  const keep = [...S.keys()].filter((i) => top > 0 && (S[i] as number) > 1e-12 * top);
  const basis = matrix64(residual.rows, keep.length);
  const coef = matrix64(keep.length, residual.cols);
  keep.forEach((c, j) => {
    for (let i = 0; i < residual.rows; i++) basis.data[i * keep.length + j] = U.data[i * U.cols + c] as number;
    for (let i = 0; i < residual.cols; i++)
      coef.data[j * residual.cols + i] = (S[c] as number) * (Vh.data[c * Vh.cols + i] as number);
  });
  return { basis, coef };
}

async function download(t: tf.Tensor): Promise<Matrix64> {
  const values = await t.data();
  t.dispose();
  return matrix64(t.shape[0] as number, t.shape[1] as number, values as Float32Array);
}

const upload = (a: Matrix64): tf.Tensor2D => tf.tensor2d(Float32Array.from(a.data), [a.rows, a.cols]);

/** Below this size the core is decomposed densely at once (cheaper than starting a Krylov space). */
const DENSE_BELOW = 96;

/** K = diag(S₀) + X·Yᵀ and the complements P, Q of {@link analyseMatrix}: O((m + n)·k·r), products on the backend. */
export async function buildCore(
  problem: MatrixProblem,
): Promise<{ core: DiagonalPlusLowRank; p: { basis: Matrix64 } | null; q: { basis: Matrix64 } | null }> {
  const { m, n, weight, left, right, scaling } = problem;
  const r = left.cols;
  const k = weight.S.length;
  const slT = upload(
    matrix64(
      m,
      r,
      left.data.map((v) => v * scaling),
    ),
  );
  const rT = upload(transpose64(right));
  // X₀ = U₀ᵀ·sL, Y₀ = V₀ᵀ·Rᵀ; the residuals outside U₀ (a tall W) or V₀ (a wide one), projected out twice
  const x0 = tf.matMul(weight.U, slT, true);
  const y0 = tf.matMul(weight.Vh, rT);
  // cols − B·(Bᵀ·cols) for B = U₀ (stored as is) or V₀ (stored as Vh = V₀ᵀ), Bᵀ·cols given as `coef`
  const outside = (stored: tf.Tensor2D, isVh: boolean, cols: tf.Tensor2D, coef: tf.Tensor) =>
    tf.tidy(() => {
      const res = tf.sub(cols, tf.matMul(stored, coef as tf.Tensor2D, isVh)) as tf.Tensor2D;
      return tf.sub(res, tf.matMul(stored, tf.matMul(stored, res, !isVh), isVh));
    });
  const outLeft = m > k ? outside(weight.U, false, slT, x0) : null;
  const outRight = n > k ? outside(weight.Vh, true, rT, y0) : null;
  tf.dispose([slT, rT]);
  const X0 = await download(x0);
  const Y0 = await download(y0);
  const p = outLeft ? complement(await download(outLeft)) : null;
  const q = outRight ? complement(await download(outRight)) : null;
  const n1 = k + (p?.basis.cols ?? 0);
  const n2 = k + (q?.basis.cols ?? 0);
  const stack = (top: Matrix64, bottom: Matrix64 | undefined) => {
    const out = new Float64Array((top.rows + (bottom?.rows ?? 0)) * r);
    out.set(top.data);
    if (bottom) out.set(bottom.data, top.data.length);
    return out;
  };
  const core: DiagonalPlusLowRank = { n1, n2, d: weight.S, r, x: stack(X0, p?.coef), y: stack(Y0, q?.coef) };
  return { core, p, q };
}

/**
 * The leading `topK` directions of W + ΔW and their cosines with W's left singular vectors — what
 * PEFT gets from its SVDs of W and of W + ΔW — from W's SVD alone:
 *
 * - W + ΔW = [U₀ P]·K·[V₀ Q]ᵀ exactly, with P, Q orthonormal bases of the parts of s·L's and Rᵀ's
 *   columns outside U₀ and V₀ (at most r each; none on the side where W's vectors span the space, so
 *   none at all for a square W), and K = diag(S₀) + X·Yᵀ of size (k + |P|)×(k + |Q|), X = [U₀ P]ᵀ·s·L,
 *   Y = [V₀ Q]ᵀ·Rᵀ. Building it costs O((m + n)·k·r) (products on the backend).
 * - K's leading triplets come from thick-restarted block Lanczos (`topSingularTriplets`, products
 *   O(k·r)), run until their residuals are below 1e-7·σ₁, on every spectrum (a flat one, as a random
 *   base's, takes a larger space or a restart, never a dense SVD of K); only a core under 96 on a
 *   side, or one that has not converged after 100 cycles, is decomposed densely.
 * - The cosines need no product: U₀ᵀ·u_i is the first k entries of K's left vector i.
 * - The vectors in the full spaces, u = U₀·a + P·b and v = V₀·c + Q·d: O((m + n)·k·topK).
 */
export async function analyseMatrix(problem: MatrixProblem, topK: number): Promise<MatrixAnalysis> {
  const { weight } = problem;
  const k = weight.S.length;
  const { core, p, q } = await buildCore(problem);
  const { n1, n2 } = core;
  const t = Math.min(topK, k);
  const small = Math.min(n1, n2) < DENSE_BELOW;
  const krylov = small ? null : topSingularTriplets(core, t);
  const top = krylov ?? (await denseTriplets(core, t));
  const cosine = new Float64Array(t);
  for (let i = 0; i < t; i++) {
    const u = top.u[i] as Float64Array;
    let best = 0;
    for (let j = 0; j < k; j++) best = Math.max(best, Math.abs(u[j] as number));
    cosine[i] = best;
  }
  // u = U₀·a + P·b, v = V₀·c + Q·d for all t directions
  const lift = async (stored: tf.Tensor2D, isVh: boolean, extra: Matrix64 | undefined, vecs: Float64Array[]) => {
    const head = matrix64(k, t);
    for (let j = 0; j < t; j++)
      for (let i = 0; i < k; i++) head.data[i * t + j] = (vecs[j] as Float64Array)[i] as number;
    const h = upload(head);
    const out = await download(tf.matMul(stored, h, isVh));
    h.dispose();
    if (extra)
      for (let j = 0; j < t; j++) {
        const v = vecs[j] as Float64Array;
        for (let i = 0; i < extra.rows; i++) {
          let acc = 0;
          for (let c = 0; c < extra.cols; c++) acc += (extra.data[i * extra.cols + c] as number) * (v[k + c] as number);
          out.data[i * t + j] = (out.data[i * t + j] as number) + acc;
        }
      }
    return out;
  };
  return {
    cosine,
    cosineBound: false,
    singularValues: top.s,
    u: await lift(weight.U, false, p?.basis, top.u),
    v: await lift(weight.Vh, true, q?.basis, top.v),
    method: krylov
      ? { kind: 'krylov', dimension: krylov.dimension, cycles: krylov.cycles }
      : { kind: 'dense', size: [n1, n2] },
  };
}

/** K's leading triplets from a dense SVD of K (`@lora/linalg`'s `svd`, on the backend for large ones). */
export async function denseTriplets(core: DiagonalPlusLowRank, t: number) {
  const { n1, n2, d, r, x, y } = core;
  const dense = new Float32Array(n1 * n2);
  for (let i = 0; i < n1; i++)
    for (let j = 0; j < n2; j++) {
      let acc = i === j && i < d.length ? (d[i] as number) : 0;
      for (let c = 0; c < r; c++) acc += (x[i * r + c] as number) * (y[j * r + c] as number);
      dense[i * n2 + j] = acc;
    }
  const kt = tf.tensor2d(dense, [n1, n2]);
  let parts: { U: tf.Tensor2D; S: tf.Tensor1D; Vh: tf.Tensor2D };
  try {
    parts = await svd(kt);
  } finally {
    kt.dispose();
  }
  const [U, S, Vh] = await Promise.all([parts.U.data(), parts.S.data(), parts.Vh.data()]);
  tf.dispose([parts.U, parts.S, parts.Vh]);
  const cols = parts.U.shape[1];
  return {
    s: Float64Array.from(S.subarray(0, t)),
    u: Array.from({ length: t }, (_, j) => Float64Array.from({ length: n1 }, (_, i) => U[i * cols + j] as number)),
    v: Array.from({ length: t }, (_, j) => Float64Array.from(Vh.subarray(j * n2, (j + 1) * n2))),
  };
}

/**
 * PEFT's mitigation of the intruders found by {@link analyseMatrix}: W_mitigated = W + ΔW +
 * (λ − 1)·Σ_I σ_i·u_i·v_iᵀ, then (W_mitigated − W)/s = L·R + ((λ − 1)/s)·Σ_I σ_i·u_i·v_iᵀ, which has
 * rank ≤ r + |I|: its leading r triplets come exactly from Householder QR of the stacked factors
 * (`svdOfLowRankProduct` with `rank: r`, O((m + n)·(r + |I|)²) in float64) instead of PEFT's dense
 * SVD, then √S on each side.
 */
export function mitigate(
  problem: Pick<MatrixProblem, 'left' | 'right' | 'scaling'>,
  analysis: MatrixAnalysis,
  intruders: number[],
  mitigationLambda: number,
): { left: Matrix64; right: Matrix64 } {
  const { left, right, scaling } = problem;
  const m = left.rows;
  const n = right.cols;
  const r = left.cols;
  const t = analysis.u.cols;
  const c = r + intruders.length;
  const stackedLeft = matrix64(m, c);
  const stackedRight = matrix64(c, n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < r; j++) stackedLeft.data[i * c + j] = left.data[i * r + j] as number;
    intruders.forEach((at, j) => {
      const f = ((mitigationLambda - 1) * (analysis.singularValues[at] as number)) / scaling;
      stackedLeft.data[i * c + r + j] = f * (analysis.u.data[i * t + at] as number);
    });
  }
  stackedRight.data.set(right.data);
  intruders.forEach((at, j) => {
    for (let i = 0; i < n; i++) stackedRight.data[(r + j) * n + i] = analysis.v.data[i * t + at] as number;
  });
  const mitigated = svdOfLowRankProduct(stackedLeft, stackedRight, { rank: r, qrMethod: 'cholesky' });
  // rank r again, √S on each side (PEFT's split); fewer than r values (a tiny layer) leave zero columns
  const newLeft = matrix64(m, r);
  const newRight = matrix64(r, n);
  for (let j = 0; j < Math.min(r, mitigated.S.length); j++) {
    const root = Math.sqrt(mitigated.S[j] as number);
    for (let i = 0; i < m; i++) newLeft.data[i * r + j] = root * (mitigated.U.data[i * mitigated.U.cols + j] as number);
    for (let i = 0; i < n; i++) newRight.data[j * n + i] = root * (mitigated.Vh.data[j * n + i] as number);
  }
  return { left: newLeft, right: newRight };
}

/** PEFT 0.21's `reduce_intruder_dimension` on one matrix: {@link analyseMatrix}, the threshold, then {@link mitigate}. */
export async function reduceMatrix(
  problem: MatrixProblem,
  settings: { topK: number; thresholdEpsilon: number; mitigationLambda: number },
  known?: MatrixAnalysis,
): Promise<MatrixReduction> {
  const analysis = known ?? (await analyseMatrix(problem, settings.topK));
  return thresholdAndMitigate(problem, settings, analysis);
}

/** PEFT's threshold on an analysis, then {@link mitigate} of the intruders found (none: null factors). */
export function thresholdAndMitigate(
  problem: Pick<MatrixProblem, 'left' | 'right' | 'scaling'>,
  settings: { topK: number; thresholdEpsilon: number; mitigationLambda: number },
  analysis: MatrixAnalysis,
): MatrixReduction {
  const examined = Math.min(settings.topK, analysis.cosine.length);
  const intruders = [...analysis.cosine.subarray(0, examined).keys()].filter(
    (i) => (analysis.cosine[i] as number) < settings.thresholdEpsilon,
  );
  const factors = intruders.length ? mitigate(problem, analysis, intruders, settings.mitigationLambda) : null;
  return { analysis, intruders, factors };
}
