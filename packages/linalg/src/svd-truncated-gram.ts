import * as tf from '@tensorflow/tfjs-core';
import { eigh } from './eigh';
import { LinalgError } from './errors';
import { matmul64, matrix64 } from './matrix64';
import { choleskyUpper, gramTensor, invertUpper, orthonormalizeTensor } from './svd-low-rank';

/** What {@link truncatedByGram} hands back: the best triplets seen (width columns, on the backend). */
export interface GramIterationResult {
  U: tf.Tensor2D;
  S: Float64Array;
  V: tf.Tensor2D;
  residual: number;
  iterations: number;
  /** Bases made orthonormal again because their Gram matrix had drifted (see below). */
  checked: number;
}

/**
 * Below this ratio of the smallest to the largest diagonal entry of z's Cholesky factor (which implies
 * a condition number of zᵀz of at least 400) z is made orthonormal again before its Rayleigh–Ritz step.
 */
const DRIFT = 0.05;

/**
 * The generalized Rayleigh–Ritz step from two Gram matrices read back in float32: with z (n×w) and
 * y = a·z, the pencil (yᵀy, zᵀz) = (Gy, Gz). Gz = RᵀR (float64 Cholesky), M = R⁻ᵀ·Gy·R⁻¹ = E·Λ·Eᵀ,
 * C = R⁻¹·E (so Cᵀ·Gz·C = I and Cᵀ·Gy·C = Λ), columns in descending order, σ = √λ. Null when Gz is not
 * positive definite or too far from orthonormal (then z is made orthonormal again).
 */
function generalizedRitz(gz: ArrayLike<number>, gy: ArrayLike<number>, w: number) {
  const r = choleskyUpper(Float64Array.from(gz), w);
  if (!r) return null;
  let lo = Number.POSITIVE_INFINITY;
  let hi = 0;
  for (let i = 0; i < w; i++) {
    const d = r[i * w + i] as number;
    lo = Math.min(lo, d);
    hi = Math.max(hi, d);
  }
  if (!(lo >= DRIFT * hi)) return null;
  // M = R⁻ᵀ·Gy·R⁻¹, symmetrised
  const rInv = matrix64(w, w, invertUpper(r, w));
  const m = matmul64(rInv, matmul64(matrix64(w, w, Float64Array.from(gy)), rInv), { transposeA: true }).data;
  for (let i = 0; i < w; i++)
    for (let j = 0; j < i; j++) {
      const mean = ((m[i * w + j] as number) + (m[j * w + i] as number)) / 2;
      m[i * w + j] = mean;
      m[j * w + i] = mean;
    }
  const { values, vectors } = eigh(matrix64(w, w, m));
  // C = R⁻¹·E, then its columns reversed (descending eigenvalues)
  const ce = matmul64(rInv, vectors).data;
  const c = new Float64Array(w * w);
  for (let i = 0; i < w; i++) for (let col = 0; col < w; col++) c[i * w + col] = ce[i * w + (w - 1 - col)] as number;
  const sigma = Float64Array.from({ length: w }, (_, col) => Math.sqrt(Math.max(0, values[w - 1 - col] as number)));
  return { c, sigma };
}

/**
 * Subspace iteration for the leading `k` triplets of `a` (m×n, float32 on the backend) with one
 * read-back an iteration: from z (n×w, near-orthonormal columns), y = a·z; zᵀz and yᵀy come back in
 * one read (with the previous iteration's squared residual norms), the Rayleigh–Ritz step is the pencil's
 * ({@link generalizedRitz}) in float64 on the host, then on the backend v = z·C, u = y·C·Σ⁻¹,
 * x = aᵀ·u, the residuals ‖xᵢ − σᵢvᵢ‖ (read with the next iteration's Gram matrices: convergence is
 * known one iteration late, which costs a product, not a round trip) and the next z = x·Σ⁻¹, whose
 * columns are ≈ the new Ritz vectors: near-orthonormal without a QR. Where zᵀz drifts ({@link DRIFT})
 * z is made orthonormal by CholeskyQR2 / Householder and the iteration taken again.
 *
 * The Ritz values come from float32 Gram matrices; as z's columns approach the Ritz vectors their
 * rounding is relative to σᵢσⱼ rather than σ₁², and the residuals reach the QR extraction's on the
 * package's test spectra (down to σₖ ≈ 4·10⁻³·σ₁). Where they stall above `tol` the caller goes on
 * with the QR extraction. Returns `{ deficient: true }` when the top-k is rank-deficient (some σᵢ,
 * i < k, below 10⁻⁶·σ₁: the u of a vanishing σ is not defined by y·C/σ). Consumes z; `aT(x)` is aᵀ·x.
 */
export async function truncatedByGram(
  a: tf.Tensor2D,
  start: tf.Tensor2D,
  k: number,
  tol: number,
  maxIterations: number,
  aT: (x: tf.Tensor2D) => tf.Tensor2D,
  explicitTranspose: boolean,
  check: (stage: string, done: number, total: number) => Promise<void>,
): Promise<GramIterationResult | { deficient: true; iterations: number; checked: number }> {
  const w = start.shape[1];
  let z = start;
  let y: tf.Tensor2D | null = null;
  let prev: { u: tf.Tensor2D; v: tf.Tensor2D; sigma: Float64Array; squares: tf.Tensor } | null = null;
  let best: { U: tf.Tensor2D; S: Float64Array; V: tf.Tensor2D; residual: number } | null = null;
  let iterations = 0;
  let checked = 0;
  let sinceBetter = 0;
  let fresh = true;
  /** The previous iteration's triplets judged by their residuals (squared norms, all w columns); true: stop. */
  const judge = (res: ArrayLike<number>): boolean => {
    const p = prev as NonNullable<typeof prev>;
    prev = null;
    p.squares.dispose();
    const s1 = p.sigma[0] as number;
    let worst = 0;
    if (s1 > 0) for (let i = 0; i < k; i++) worst = Math.max(worst, Math.sqrt(Math.max(0, res[i] as number)) / s1);
    if (!best || worst < best.residual * 0.95) {
      if (best) tf.dispose([best.U, best.V]);
      best = { U: p.u, S: p.sigma, V: p.v, residual: worst };
      sinceBetter = 0;
    } else {
      tf.dispose([p.u, p.v]);
      sinceBetter++;
    }
    return worst <= tol || sinceBetter >= 4;
  };
  try {
    for (;;) {
      if (iterations >= maxIterations) {
        if (prev) judge((await (prev as { squares: tf.Tensor }).squares.data()) as Float32Array);
        break;
      }
      iterations++;
      const yNow = tf.matMul(a, z) as tf.Tensor2D;
      y = yNow;
      const zNow = z;
      const before = prev as { squares: tf.Tensor } | null;
      const read = tf.tidy(() =>
        tf.concat([
          tf.reshape(gramTensor(zNow, explicitTranspose), [-1]),
          tf.reshape(gramTensor(yNow, explicitTranspose), [-1]),
          ...(before ? [before.squares] : []),
        ]),
      );
      const values = (await read.data()) as Float32Array;
      read.dispose();
      if (prev && judge(values.subarray(2 * w * w))) break;
      await check('iterate', iterations, maxIterations);
      const ritz = generalizedRitz(values.subarray(0, w * w), values.subarray(w * w, 2 * w * w), w);
      if (!ritz) {
        // z drifted from orthonormal: make it orthonormal, and take this iteration again
        if (fresh)
          throw new LinalgError('svdTruncated: the Gram matrix of an orthonormal basis failed its Cholesky (a bug)');
        checked++;
        yNow.dispose();
        y = null;
        z = await orthonormalizeTensor(z, explicitTranspose);
        fresh = true;
        iterations--;
        continue;
      }
      fresh = false;
      const { c, sigma } = ritz;
      const s1 = sigma[0] as number;
      if (!(s1 > 0) || sigma.subarray(0, k).some((s) => !(s > 1e-6 * s1))) {
        const held = best as { U: tf.Tensor2D; V: tf.Tensor2D } | null;
        if (held) tf.dispose([held.U, held.V]);
        best = null;
        return { deficient: true, iterations, checked };
      }
      // beyond the k returned, a tiny σ is clamped (its column of the next z is then small, and the
      // drift check catches it)
      const inverse = Float32Array.from(sigma, (s) => 1 / Math.max(s, 1e-6 * s1));
      const cScaled = new Float32Array(w * w);
      for (let i = 0; i < w; i++)
        for (let j = 0; j < w; j++) cScaled[i * w + j] = (c[i * w + j] as number) * (inverse[j] as number);
      const step = tf.tidy(() => {
        const u = tf.matMul(yNow, tf.tensor2d(cScaled, [w, w])) as tf.Tensor2D;
        const v = tf.matMul(zNow, tf.tensor2d(Float32Array.from(c), [w, w])) as tf.Tensor2D;
        const x = aT(u);
        // ‖xᵢ − σᵢvᵢ‖² for all w columns (the judge looks at the first k): fewer programs than slicing
        const squares = tf.sum(tf.square(tf.sub(x, tf.mul(v, tf.tensor1d(Float32Array.from(sigma))))), 0);
        return { u, v, squares, next: tf.mul(x, tf.tensor1d(inverse)) as tf.Tensor2D };
      });
      yNow.dispose();
      y = null;
      zNow.dispose();
      z = step.next;
      prev = { u: step.u, v: step.v, sigma, squares: step.squares };
    }
  } catch (err) {
    const held = best as { U: tf.Tensor2D; V: tf.Tensor2D } | null;
    if (held) tf.dispose([held.U, held.V]);
    throw err;
  } finally {
    const left = prev as { u: tf.Tensor2D; v: tf.Tensor2D; squares: tf.Tensor } | null;
    if (left) tf.dispose([left.u, left.v, left.squares]);
    y?.dispose();
    z.dispose();
  }
  // every exit of the loop above judges an iteration first, so `best` is set
  const b = best as { U: tf.Tensor2D; S: Float64Array; V: tf.Tensor2D; residual: number } | null;
  if (!b) throw new LinalgError('svdTruncated: the Gram extraction ended without judging an iteration (a bug)');
  return { U: b.U, S: b.S, V: b.V, residual: b.residual, iterations, checked };
}
