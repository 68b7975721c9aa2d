import * as tf from '@tensorflow/tfjs-core';
import { eigh, type Matrix64, matrix64 } from '@lora/linalg';
import { Columns, extendByBlock } from './top-singular';

/** What {@link krylovTriplets} returns: W + ΔW's leading triplets, u also on the backend. */
export interface KrylovTriplets {
  /** Left vectors (m×t) on the backend; the caller frees them. */
  uTensor: tf.Tensor2D;
  u: Matrix64;
  v: Matrix64;
  s: Float64Array;
  converged: boolean;
  /** Block products taken (each one read-back of n×b). */
  iterations: number;
}

/**
 * The `t` leading singular triplets of G (m×n, on the backend; `gT` its transpose, formed), by block
 * Krylov on GᵀG with the basis kept on the host in float64: each block step is one product
 * Gᵀ·(G·Q_j) on the backend (n×b, one read-back), projected off the whole basis (two passes of
 * Gram–Schmidt, the first over the last two blocks as Lanczos has it) — the projection coefficients
 * are H = Qᵀ·GᵀG·Q, so Rayleigh–Ritz is the eigendecomposition of H alone, and a Ritz pair's
 * residual ‖GᵀG·v − θ·v‖ is read off the coefficients beyond the space. Stops once every one of the
 * t leading pairs has a residual ≤ `tol`·θ₁ (default 1e-6), or ≤ 1e-5·θ₁ and no longer halving from
 * one block to the next (the float32 products' floor), or the space holds `maxDimension` vectors. Then v = Q·y on the host, G·v on the backend: σ = ‖G·v‖, u = G·v/σ.
 * The start block is `start` (the rows of the LoRA factor R, which hold ΔW's right space, and a few
 * seeded random vectors).
 */
export async function krylovTriplets(
  g: tf.Tensor2D,
  gT: tf.Tensor2D,
  start: Float64Array[],
  t: number,
  options: { tol?: number; maxDimension?: number } = {},
): Promise<KrylovTriplets> {
  const [m, n] = g.shape;
  const tol = options.tol ?? 1e-6;
  const maxDimension = Math.min(n, options.maxDimension ?? Math.max(8 * start.length, 160));
  // room for the block the last product adds beyond maxDimension, so that its residuals are known
  const cap = Math.min(n, maxDimension + 2 * start.length);
  const basis = new Columns(n, cap);
  extendByBlock(
    basis,
    start.map((v) => Float64Array.from(v)),
    cap,
  );
  const h = new Float64Array(cap * cap);
  const known = new Int32Array(cap);
  let iterations = 0;
  let best: { theta: Float64Array; y: Float64Array[]; worst: number } | null = null;
  for (let from = 0, previous = 0; from < basis.count && from < maxDimension; ) {
    const to = basis.count;
    const width = to - from;
    const block = new Float32Array(n * width);
    for (let l = 0; l < width; l++) {
      const col = basis.column(from + l);
      for (let i = 0; i < n; i++) block[i * width + l] = col[i] as number;
    }
    const product = tf.tidy(() => {
      const q = tf.tensor2d(block, [n, width]);
      return tf.matMul(gT, tf.matMul(g, q));
    });
    const values = (await product.data()) as Float32Array;
    product.dispose();
    iterations++;
    const ws = Array.from({ length: width }, (_, l) => {
      const w = new Float64Array(n);
      for (let i = 0; i < n; i++) w[i] = values[i * width + l] as number;
      return w;
    });
    extendByBlock(
      basis,
      ws,
      cap,
      (i, l, value) => {
        h[i * cap + from + l] = value;
      },
      previous,
    ).forEach((rows, l) => {
      known[from + l] = rows;
    });
    previous = from;
    from = to;
    // Rayleigh–Ritz on the columns whose products are known (0 … to − 1): H is to×to
    // no new direction (the space is invariant, or all of Rⁿ), or no more products to take
    const done = basis.count === to || to >= maxDimension;
    // from the third block on (an eigendecomposition of H per check: tens of ms at d ≈ 200)
    if (to >= t && (done || to >= 3 * start.length)) {
      const ritz = ritzFromCoefficients(h, known, cap, to, t);
      const previousWorst = best?.worst ?? Number.POSITIVE_INFINITY;
      if (!best || ritz.worst < best.worst) best = ritz;
      const theta1 = (ritz.theta[0] as number) || 1;
      // converged; or within 1e-5 and no longer halving (the float32 products' floor)
      if (ritz.worst <= tol * theta1 || (ritz.worst <= 1e-5 * theta1 && ritz.worst > 0.5 * previousWorst) || done)
        break;
    }
  }
  if (!best) throw new Error('krylovTriplets: the start block is empty');
  const scale = (best.theta[0] as number) || 1;
  const converged = best.worst <= Math.max(tol, 1e-5) * scale || basis.count >= n;
  // v = Q·y (host, float64), then G·v on the backend
  const v = matrix64(n, t);
  for (let c = 0; c < t; c++) {
    const y = best.y[c] as Float64Array;
    for (let j = 0; j < y.length; j++) {
      const coef = y[j] as number;
      if (coef === 0) continue;
      const q = basis.column(j);
      for (let i = 0; i < n; i++) v.data[i * t + c] = (v.data[i * t + c] as number) + coef * (q[i] as number);
    }
  }
  const { uTensor, norms } = tf.tidy(() => {
    const gv = tf.matMul(g, tf.tensor2d(Float32Array.from(v.data), [n, t]));
    const norms = tf.norm(gv, 'euclidean', 0);
    return { uTensor: tf.div(gv, tf.maximum(norms, 1e-30)) as tf.Tensor2D, norms };
  });
  try {
    const [uValues, s] = await Promise.all([uTensor.data(), norms.data()]);
    return {
      uTensor,
      u: matrix64(m, t, Float64Array.from(uValues)),
      v,
      s: Float64Array.from(s),
      converged,
      iterations,
    };
  } catch (err) {
    uTensor.dispose();
    throw err;
  } finally {
    norms.dispose();
  }
}

/**
 * Ritz pairs of GᵀG on the first `dim` basis vectors from the coefficients h (h[i·cap + j] = q_iᵀ·GᵀG·q_j
 * for i < known[j]): the eigendecomposition of H's symmetrised leading dim×dim block, the `t` largest
 * θ with their y, and the largest residual ‖Σ_{i ≥ dim} (H·y)_i·q_i‖ = ‖(GᵀG − θ)·Q·y‖ among them.
 */
function ritzFromCoefficients(h: Float64Array, known: Int32Array, cap: number, dim: number, t: number) {
  const sym = new Float64Array(dim * dim);
  for (let i = 0; i < dim; i++)
    for (let j = 0; j < dim; j++) {
      const a = i < (known[j] as number) ? (h[i * cap + j] as number) : null;
      const b = j < (known[i] as number) ? (h[j * cap + i] as number) : null;
      sym[i * dim + j] = a === null ? (b ?? 0) : b === null ? a : (a + b) / 2;
    }
  const { values, vectors } = eigh(matrix64(dim, dim, sym));
  const theta = new Float64Array(t);
  const y: Float64Array[] = [];
  let worst = 0;
  let rowsBeyond = dim;
  for (let j = 0; j < dim; j++) rowsBeyond = Math.max(rowsBeyond, known[j] as number);
  for (let c = 0; c < t; c++) {
    const col = dim - 1 - c;
    theta[c] = values[col] as number;
    const yc = Float64Array.from({ length: dim }, (_, j) => vectors.data[j * dim + col] as number);
    y.push(yc);
    let r2 = 0;
    for (let i = dim; i < rowsBeyond; i++) {
      let acc = 0;
      for (let j = 0; j < dim; j++) if (i < (known[j] as number)) acc += (h[i * cap + j] as number) * (yc[j] as number);
      r2 += acc * acc;
    }
    worst = Math.max(worst, Math.sqrt(r2));
  }
  return { theta, y, worst };
}
