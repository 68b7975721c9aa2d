import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { LinalgError } from './errors';
import { type LongRunOptions, checkpoints } from './long-run';
import { type Matrix64, assertFiniteTensor, isMatrix64 } from './matrix64';
import { type SvdTensors, svd } from './svd';
import { type Svd64, svd64 } from './svd-float64';
import { choleskyQr2Deferred, orthogonalityDeviation, orthonormalizeTensor } from './svd-low-rank';
import { type GramIterationResult, truncatedByGram } from './svd-truncated-gram';

/** Options of {@link svdTruncated}. */
export interface SvdTruncatedOptions extends LongRunOptions {
  /** How many leading singular triplets to return. */
  rank: number;
  /** Extra columns carried by the subspace iteration (they speed convergence up). Default max(rank, 16). */
  oversample?: number;
  /**
   * Stop when every returned triplet's residual ‖Aᵀuᵢ − σᵢvᵢ‖ is at most `tol·σ₁` (Avᵢ = σᵢuᵢ holds by
   * construction). Default 5e-6, which keeps U·diag(S)·Vh within about 1e-5 of the exact truncation
   * (relative to its largest entry) where float32 allows: the residuals of float32 products stall near
   * 1e-6 for n in the thousands.
   */
  tol?: number;
  /** Cap on subspace iterations. Default 300. */
  maxIterations?: number;
  /** Seed of the random start. Default 0. */
  seed?: number;
  /**
   * How each iteration extracts its Ritz triplets. `'qr'` (default): a·z = Q·R by CholeskyQR2 and
   * the SVD of R = Qᵀ·a·z, six small read-backs an iteration. `'gram'`: the generalized Rayleigh–Ritz
   * step of the pencil ((a·z)ᵀ(a·z), zᵀz), one read-back an iteration (the residuals ride along with the
   * next iteration's Gram matrices) — for a GPU, where each read-back is a round trip and the products
   * are nearly free. Its Ritz values come from float32 Gram matrices: where their rounding keeps the
   * residuals from falling below `tol` (they stall for 4 iterations), the iteration goes on from its
   * subspace with `'qr'` and returns the better of the two; where σᵢ < 10⁻⁶·σ₁ for some i < rank (a
   * rank-deficient top, whose u is not y·c/σ), `'qr'` starts anew. Each hand-over counts in `checked`,
   * `iterations` counts both; `converged` says whether `tol` was met (not when `maxIterations` ran out).
   * Its residuals are read one iteration late, so it runs one product more than it uses.
   */
  extraction?: 'qr' | 'gram';
}

/** Result of {@link svdTruncated} on a tensor: the caller owns U, S and Vh. */
export interface SvdTruncatedTensors extends SvdTensors {
  /** Subspace iterations run (0 when the matrix was small enough to decompose whole). */
  iterations: number;
  /** The largest residual ‖Aᵀuᵢ − σᵢvᵢ‖ / σ₁ of the returned triplets. */
  residual: number;
  /** Whether `residual ≤ tol` (false: stopped at `maxIterations` or where float32 rounding stalled it). */
  converged: boolean;
  /**
   * Orthonormalisations that took the checked path (CholeskyQR2 failed or strayed from orthonormal in
   * float32, so the basis was made again with its result read back, or by Householder): each costs a
   * few more read-backs. 0 for a well-conditioned iteration.
   */
  checked: number;
}

function truncate64(r: Svd64, k: number): Svd64 {
  const { U, S, Vh } = r;
  const u = new Float64Array(U.rows * k);
  for (let i = 0; i < U.rows; i++) u.set(U.data.subarray(i * U.cols, i * U.cols + k), i * k);
  return {
    U: { rows: U.rows, cols: k, data: u },
    S: S.slice(0, k),
    Vh: { rows: k, cols: Vh.cols, data: Vh.data.slice(0, k * Vh.cols) },
  };
}

/** The first k columns / entries / rows of a full decomposition's tensors (disposes the rest). */
function truncateTensors(r: SvdTensors, k: number): SvdTensors {
  const out = tf.tidy(() => ({
    U: tf.slice(r.U, [0, 0], [-1, k]) as tf.Tensor2D,
    S: tf.slice(r.S, [0], [k]) as tf.Tensor1D,
    Vh: tf.slice(r.Vh, [0, 0], [k, -1]) as tf.Tensor2D,
  }));
  tf.dispose([r.U, r.S, r.Vh]);
  return out;
}

/**
 * The leading `rank` singular triplets of a matrix, `a ≈ U·diag(S)·Vh` with U m×k, S descending and
 * Vh k×n, matching the exact SVD's first k triplets (to `tol`), for matrices that are full-rank but of
 * which only the top is used (a pruned combination of LoRA updates, W itself). Subspace iteration with
 * Rayleigh–Ritz extraction (Halko, Martinsson & Tropp 2011, §4.5), run until the residuals of the
 * returned triplets fall below `tol·σ₁`; each iteration is two products with `a` on the active backend.
 * Matrices with min(m, n) < 128, or when `rank + oversample` reaches half of it, are decomposed whole
 * ({@link svd}) and truncated, as is a Matrix64 (exactly, in float64).
 *
 * @example
 * ```ts
 * const top = await svdTruncated(mergedDelta, { rank: 16 });     // ties_svd's B = U·diag(S), A = Vh
 * console.log(top.iterations, top.residual);
 * tf.dispose([top.U, top.S, top.Vh]);
 * ```
 */
export function svdTruncated(a: Matrix64, options: SvdTruncatedOptions): Svd64;
export function svdTruncated(a: tf.Tensor2D, options: SvdTruncatedOptions): Promise<SvdTruncatedTensors>;
export function svdTruncated(
  a: Matrix64 | tf.Tensor2D,
  options: SvdTruncatedOptions,
): Svd64 | Promise<SvdTruncatedTensors> {
  const rank = options?.rank;
  const [m, n] = isMatrix64(a) ? [a.rows, a.cols] : a.shape;
  if (!Number.isInteger(rank) || rank < 1 || rank > Math.min(m as number, n as number))
    throw new LinalgError(
      `svdTruncated: rank ${String(rank)} must be an integer in [1, min(m, n) = ${Math.min(m as number, n as number)}]`,
    );
  const oversample = options.oversample ?? Math.max(rank, 16);
  if (!Number.isInteger(oversample) || oversample < 0)
    throw new LinalgError(`svdTruncated: oversample ${oversample} must be a non-negative integer`);
  const tol = options.tol ?? 5e-6;
  if (!(tol > 0)) throw new LinalgError(`svdTruncated: tol ${tol} must be positive`);
  const maxIterations = options.maxIterations ?? 300;
  if (!Number.isInteger(maxIterations) || maxIterations < 1)
    throw new LinalgError(`svdTruncated: maxIterations ${maxIterations} must be a positive integer`);
  const extraction = options.extraction ?? 'qr';
  if (extraction !== 'qr' && extraction !== 'gram')
    throw new LinalgError(`svdTruncated: extraction ${JSON.stringify(extraction)} must be 'qr' or 'gram'`);
  if (isMatrix64(a)) return truncate64(svd64(a, false, 'svdTruncated'), rank);
  return truncatedTensor(a, rank, oversample, tol, maxIterations, options);
}

async function truncatedTensor(
  a: tf.Tensor2D,
  k: number,
  oversample: number,
  tol: number,
  maxIterations: number,
  options: SvdTruncatedOptions,
): Promise<SvdTruncatedTensors> {
  if (a.rank !== 2) throw new LinalgError(`svdTruncated: expected a 2-D tensor, got shape [${a.shape.join(', ')}]`);
  const [m, n] = a.shape;
  const width = Math.min(k + oversample, m, n);
  if (Math.min(m, n) < 128 || 2 * width > Math.min(m, n)) {
    const whole = await svd(a, { signal: options.signal, onProgress: options.onProgress });
    return { ...truncateTensors(whole, k), iterations: 0, residual: 0, converged: true, checked: 0 };
  }
  await assertFiniteTensor(a, 'svdTruncated');
  const check = checkpoints(options);
  // aᵀ·x: on wasm as (xᵀ·a)ᵀ, as its products with a transposed operand are slow (see svdLowRank)
  const slowFlags = tf.getBackend() === 'wasm';
  const aT = (x: tf.Tensor2D) =>
    (slowFlags
      ? tf.tidy(() => tf.transpose(tf.matMul(tf.transpose(x), a)))
      : tf.matMul(a, x, true, false)) as tf.Tensor2D;
  const g = new Generator(options.seed ?? 0);
  const randomStart = () =>
    orthonormalizeTensor(tf.tensor2d(g.fillNormal(new Float32Array(n * width)), [n, width]), slowFlags);
  let z = await randomStart();
  let iterations = 0;
  let checked = 0;
  // the Gram extraction's best triplets where the QR extraction takes over from them (kept: the better
  // of the two is returned)
  let handed: GramIterationResult | null = null;
  if (options.extraction === 'gram') {
    const byGram = await truncatedByGram(a, z, k, tol, maxIterations, aT, slowFlags, check);
    if (!('deficient' in byGram) && (byGram.residual <= tol || byGram.iterations >= maxIterations))
      return finish(byGram, m, n, k, tol);
    // not converged: on with the QR extraction from its subspace; a rank-deficient top: from a new start
    iterations = byGram.iterations;
    checked = byGram.checked + 1;
    if ('deficient' in byGram) z = await randomStart();
    else {
      handed = byGram;
      try {
        z = await orthonormalizeTensor(tf.clone(byGram.V), slowFlags);
      } catch (err) {
        tf.dispose([byGram.U, byGram.V]);
        throw err;
      }
    }
  }
  // z's orthogonality (QᵀQ, unread) when z came from an unchecked CholeskyQR2: read with the next
  // iteration's first Gram matrix, so that checking costs no round trip of its own
  let zCheck: tf.Tensor2D | null = null;
  let best: { U: tf.Tensor2D; S: Float64Array; V: tf.Tensor2D; residual: number } | null = null;
  let sinceBetter = 0;
  // tensors of the current iteration not yet owned by `best` or `z`: freed if anything throws
  let pending: tf.Tensor[] = [];
  /**
   * Rayleigh–Ritz on span(z) from Q, an orthonormal basis of a·z, and R = Qᵀ·a·z (read back):
   * R = Ur·S·Vrᵀ, so U = Q·Ur, V = z·Vr and a·V = U·S; then x = aᵀ·U and the residual norms
   * ‖xᵢ − σᵢvᵢ‖ on the backend, unread.
   */
  const ritz = (q: tf.Tensor2D, r: Float64Array) => {
    const small = svd64({ rows: width, cols: width, data: r }, false, 'svdTruncated');
    const { u, v } = tf.tidy(() => ({
      u: tf.matMul(q, tf.tensor2d(Float32Array.from(small.U.data), [width, width])) as tf.Tensor2D,
      v: tf.matMul(z, tf.tensor2d(Float32Array.from(small.Vh.data), [width, width]), false, true) as tf.Tensor2D,
    }));
    const x = aT(u);
    const norms = tf.tidy(() => {
      const scaled = tf.mul(tf.slice(v, [0, 0], [n, k]), tf.tensor1d(Float32Array.from(small.S.subarray(0, k))));
      return tf.norm(tf.sub(tf.slice(x, [0, 0], [n, k]), scaled), 'euclidean', 0);
    });
    return { u, v, x, norms, sigma: small.S };
  };
  /** Qᵀ·y on the backend, read back: the Rayleigh–Ritz core (the projection onto the Q formed, rounding included). */
  const projection = async (q: tf.Tensor2D, y: tf.Tensor2D) => {
    const rT = slowFlags ? tf.tidy(() => tf.matMul(tf.transpose(q), y)) : tf.matMul(q, y, true, false);
    const r = Float64Array.from((await rT.data()) as Float32Array);
    rT.dispose();
    return r;
  };
  /** Q and Qᵀ·y by the checked path (CholeskyQR2 with its check, or Householder where it fails). */
  const checkedFactor = async (y: tf.Tensor2D) => {
    const q = await orthonormalizeTensor(tf.clone(y), slowFlags);
    return { q, r: await projection(q, y) };
  };
  try {
    while (iterations < maxIterations) {
      iterations++;
      const y = tf.matMul(a, z) as tf.Tensor2D;
      pending.push(y);
      // a·z = Q·R by CholeskyQR2, its check deferred to the residuals' read-back; z's check read here
      const fast = await choleskyQr2Deferred(y, slowFlags, zCheck ?? undefined);
      if (fast) pending.push(fast.q, fast.check);
      if (zCheck) {
        const zValues = fast?.alongsideValues ?? ((await zCheck.data()) as Float32Array);
        zCheck.dispose();
        zCheck = null;
        if (!(orthogonalityDeviation(zValues, width) < 1e-5)) {
          checked++;
          // z was not orthonormal (an ill-conditioned x): orthonormalize it the checked way, and redo
          tf.dispose(pending);
          pending = [];
          z = await orthonormalizeTensor(z, slowFlags);
          iterations--;
          continue;
        }
      }
      let factor = fast ? { q: fast.q, r: await projection(fast.q, y) } : await checkedFactor(y);
      if (!fast) {
        checked++;
        pending.push(factor.q);
      }
      let step = ritz(factor.q, factor.r);
      pending.push(step.u, step.v, step.x, step.norms);
      let res: Float32Array;
      if (fast) {
        const both = tf.tidy(() => tf.concat([step.norms, tf.reshape(fast.check, [-1])]));
        const values = (await both.data()) as Float32Array;
        both.dispose();
        res = values.subarray(0, k);
        if (!(orthogonalityDeviation(values, width, k) < 1e-5)) {
          // Q strayed from orthonormal: this iteration again by the checked path
          checked++;
          tf.dispose([step.u, step.v, step.x, step.norms]);
          factor = await checkedFactor(y);
          pending.push(factor.q);
          step = ritz(factor.q, factor.r);
          pending.push(step.u, step.v, step.x, step.norms);
          res = (await step.norms.data()) as Float32Array;
        }
      } else res = (await step.norms.data()) as Float32Array;
      const { u, v, x, sigma } = step;
      const s1 = sigma[0] as number;
      let worst = 0;
      if (s1 > 0) for (let i = 0; i < k; i++) worst = Math.max(worst, (res[i] as number) / s1);
      // everything of this iteration but u, v (kept by `best` or freed below) and x (the next z's input)
      tf.dispose(pending.filter((t) => t !== u && t !== v && t !== x));
      pending = [x];
      if (!best || worst < best.residual * 0.95) {
        if (best) tf.dispose([best.U, best.V]);
        best = { U: u, S: sigma, V: v, residual: worst };
        sinceBetter = 0;
      } else {
        tf.dispose([u, v]);
        sinceBetter++;
      }
      await check('iterate', iterations, maxIterations);
      // converged, or float32 rounding has stopped the residual from falling
      if (worst <= tol || sinceBetter >= 4) break;
      z.dispose();
      const next = await choleskyQr2Deferred(x, slowFlags);
      pending = [];
      if (next) {
        x.dispose();
        z = next.q;
        zCheck = next.check;
      } else {
        checked++;
        z = await orthonormalizeTensor(x, slowFlags);
      }
    }
  } catch (err) {
    if (best) tf.dispose([best.U, best.V]);
    if (handed) tf.dispose([handed.U, handed.V]);
    throw err;
  } finally {
    tf.dispose(pending);
    zCheck?.dispose();
    z.dispose();
  }
  const fromQr = best as NonNullable<typeof best>;
  if (handed && handed.residual < fromQr.residual) {
    tf.dispose([fromQr.U, fromQr.V]);
    return finish({ ...handed, iterations, checked }, m, n, k, tol);
  }
  if (handed) tf.dispose([handed.U, handed.V]);
  return finish({ ...fromQr, iterations, checked }, m, n, k, tol);
}

/** The first k triplets of the best iteration as the caller's tensors (U, V freed). */
function finish(
  b: { U: tf.Tensor2D; S: Float64Array; V: tf.Tensor2D; residual: number; iterations: number; checked: number },
  m: number,
  n: number,
  k: number,
  tol: number,
): SvdTruncatedTensors {
  const out = tf.tidy(() => ({
    U: tf.slice(b.U, [0, 0], [m, k]) as tf.Tensor2D,
    S: tf.tensor1d(Float32Array.from(b.S.subarray(0, k))),
    Vh: tf.transpose(tf.slice(b.V, [0, 0], [n, k])) as tf.Tensor2D,
  }));
  tf.dispose([b.U, b.V]);
  return {
    ...out,
    iterations: b.iterations,
    residual: b.residual,
    converged: b.residual <= tol,
    checked: b.checked,
  };
}
