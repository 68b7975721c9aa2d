import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, matrix64, svdTruncated } from '@lora/linalg';
import { CERTIFY_MARGIN, certifySteps, cosineUpperBounds, gramFloorHolds, tallCosineBounds } from './certify';
import type { MatrixAnalysis } from './reduce-matrix';
import type { WeightSvd } from './weight-svd-cache';

/** W + ΔW's leading triplets, taken from W + ΔW itself on the backend (no SVD of W). */
export interface SumTriplets {
  /** Left vectors (m×t) on the backend; the caller frees them. */
  uTensor: tf.Tensor2D;
  u: Matrix64;
  v: Matrix64;
  s: Float64Array;
  converged: boolean;
  iterations: number;
}

/**
 * The `t` leading singular triplets of G = W + s·L·R (W m×n on the backend, L m×r, R r×n): G is
 * formed on the backend (one product of rank r) and `@lora/linalg`'s `svdTruncated` (block subspace
 * iteration with Rayleigh–Ritz, products with G on the backend, float32, residual ≤ 5e-6·σ₁; a full
 * SVD below 128 on a side) takes its leading triplets. (Block Krylov with the basis in float64 on the
 * host, commit 73a3bf5, took fewer products but was slower on the H200: the host Gram–Schmidt.)
 * `converged` false: the residual stalled above the tolerance (a cluster at the t-th value); the
 * caller then takes the exact path.
 */
export async function sumTriplets(
  w: tf.Tensor2D,
  left: Matrix64,
  right: Matrix64,
  scaling: number,
  t: number,
): Promise<SumTriplets> {
  const [m, n] = w.shape;
  const g = tf.tidy(() =>
    tf.add(
      w,
      tf.matMul(
        tf.tensor2d(
          Float32Array.from(left.data, (x) => x * scaling),
          [m, left.cols],
        ),
        tf.tensor2d(Float32Array.from(right.data), [right.rows, n]),
      ),
    ),
  ) as tf.Tensor2D;
  let parts: Awaited<ReturnType<typeof svdTruncated>> | undefined;
  try {
    parts = await svdTruncated(g, { rank: t, extraction: 'gram' });
  } finally {
    g.dispose();
  }
  try {
    const [U, S, Vh] = await Promise.all([parts.U.data(), parts.S.data(), parts.Vh.data()]);
    const v = matrix64(n, t);
    for (let i = 0; i < t; i++) for (let j = 0; j < n; j++) v.data[j * t + i] = Vh[i * n + j] as number;
    return {
      uTensor: parts.U,
      u: matrix64(m, t, Float64Array.from(U)),
      v,
      s: Float64Array.from(S),
      converged: parts.converged,
      iterations: parts.iterations,
    };
  } catch (err) {
    parts.U.dispose();
    throw err;
  } finally {
    tf.dispose([parts.S, parts.Vh]);
  }
}

/** max_j |⟨u_i, u₀_j⟩| for each column of `u` (m×t), exactly, from W's SVD: U₀ᵀ·u on the backend. */
export async function exactCosines(weight: WeightSvd, u: tf.Tensor2D): Promise<Float64Array> {
  const best = tf.tidy(() => tf.max(tf.abs(tf.matMul(weight.U, u, true)), 0));
  const values = await best.data();
  best.dispose();
  return Float64Array.from(values);
}

/**
 * The analysis of one layer from W + ΔW's own leading triplets ({@link sumTriplets}), with cosines
 * that are either exact (from W's SVD, `weight`) or, when `weight` is not given, upper bounds
 * ({@link cosineUpperBounds} for m ≤ n, {@link tallCosineBounds} with a certified floor on W's
 * smallest singular value for m > n) accepted only if they decide every examined direction as
 * an intruder with {@link CERTIFY_MARGIN} to spare. Returns null when that certificate fails (the
 * caller then asks for W's SVD).
 */
export async function analyseFromSum(
  top: SumTriplets,
  w: tf.Tensor2D | null,
  weight: WeightSvd | null,
  epsilon: number,
  floor?: KnownFloor,
): Promise<MatrixAnalysis | null> {
  const t = top.s.length;
  const method = { kind: 'sum' as const, iterations: top.iterations };
  if (weight)
    return {
      cosine: await exactCosines(weight, top.uTensor),
      cosineBound: false,
      singularValues: top.s,
      u: top.u,
      v: top.v,
      method,
    };
  if (!w) throw new Error('analyseFromSum: neither W nor its SVD');
  const steps = certifySteps(epsilon);
  const [m, n] = w.shape;
  const bounds =
    m <= n
      ? await cosineUpperBounds(w, top.uTensor, steps, epsilon - CERTIFY_MARGIN)
      : await tallBounds(w, top.uTensor, steps, epsilon, floor);
  if (!bounds) return null;
  const certified: MatrixAnalysis = {
    cosine: bounds,
    cosineBound: true,
    singularValues: top.s,
    u: top.u,
    v: top.v,
    method: { kind: 'certified', iterations: top.iterations, lanczosSteps: Math.min(steps, m, n) },
  };
  return decides(certified, t, epsilon) ? certified : null;
}

/**
 * The tall case's bounds ({@link tallCosineBounds}), with the floor on λ_min(WᵀW) they need certified
 * by a Cholesky factorisation; null when a bound is not below ε − margin or the floor does not hold.
 */
async function tallBounds(
  w: tf.Tensor2D,
  u: tf.Tensor2D,
  steps: number,
  epsilon: number,
  floor?: KnownFloor,
): Promise<Float64Array | null> {
  const target = (epsilon - CERTIFY_MARGIN) ** 2;
  if (!(target > 0)) return null;
  const { upper, floorNeeded, smallestNode, largestNode } = await tallCosineBounds(w, u, steps, target);
  if (upper.some((x) => !(x < target))) return null;
  // twice the floor the bottom term needs, so that it stays at half the target
  const gamma = 2 * Math.max(0, ...floorNeeded);
  if (gamma > 0 && gamma > (floor?.known ?? 0)) {
    if (!(gamma < smallestNode)) return null;
    // first a generous floor (half the smallest Ritz value, itself ≥ λ_min), which later adapters can reuse
    const generous = Math.max(gamma, smallestNode / 2);
    if (await gramFloorHolds(w, generous, largestNode)) floor?.record(generous);
    else if (generous > gamma && (await gramFloorHolds(w, gamma, largestNode))) floor?.record(gamma);
    else return null;
  }
  return upper.map((x, i) =>
    Math.sqrt(Math.min(1, Math.max(x, gamma > 0 ? ((floorNeeded[i] as number) * target) / gamma : 0))),
  );
}

/** A floor on λ_min(WᵀW) already certified for this weight (0: none), and where to keep a new one. */
export interface KnownFloor {
  known: number;
  record(floor: number): void;
}

/** Whether a (possibly bound-based) analysis decides every examined direction for `epsilon`. */
export function decides(analysis: MatrixAnalysis, topK: number, epsilon: number): boolean {
  if (!analysis.cosineBound) return true;
  const examined = Math.min(topK, analysis.cosine.length);
  for (let i = 0; i < examined; i++) if (!((analysis.cosine[i] as number) < epsilon - CERTIFY_MARGIN)) return false;
  return true;
}
