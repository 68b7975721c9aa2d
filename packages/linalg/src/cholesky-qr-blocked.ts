import * as tf from '@tensorflow/tfjs-core';
import { choleskyUpper, invertUpper } from './svd-low-rank';

/**
 * R (upper triangular, n×n) with RᵀR = G for a symmetric positive definite G (n×n, float32 on the
 * backend), by right-looking blocked Cholesky: each diagonal block of the Schur complement is read
 * back and factored in float64 on the host, its panel R₁₂ = R₁₁⁻ᵀ·G₁₂ and the update G₂₂ − R₁₂ᵀR₁₂
 * are products on the backend. n/`block` read-backs of `block`². Returns R and the inverses of its
 * diagonal blocks (tensors), or null where a block is not positive definite (G is not, in float32).
 */
async function blockedCholesky(
  g: tf.Tensor2D,
  block: number,
): Promise<{ r: tf.Tensor2D; diagInv: tf.Tensor2D[] } | null> {
  const n = g.shape[0];
  const rows: tf.Tensor2D[] = [];
  const diagInv: tf.Tensor2D[] = [];
  // the Schur complement left to factor (null once every block is done)
  let s: tf.Tensor2D | null = tf.clone(g);
  try {
    for (let at = 0; at < n; at += block) {
      const b = Math.min(block, n - at);
      const current: tf.Tensor2D = s as tf.Tensor2D;
      const head = tf.slice(current, [0, 0], [b, b]);
      const values = await head.data();
      head.dispose();
      const r11 = choleskyUpper(Float64Array.from(values), b);
      if (!r11?.every(Number.isFinite)) {
        tf.dispose([...rows, ...diagInv]);
        return null;
      }
      const r11T = tf.tensor2d(Float32Array.from(r11), [b, b]);
      const inv = tf.tensor2d(Float32Array.from(invertUpper(r11, b)), [b, b]);
      diagInv.push(inv);
      const rest = n - at - b;
      const step = tf.tidy(() => {
        if (rest === 0) return { row: tf.concat(at ? [tf.zeros([b, at]), r11T] : [r11T], 1) as tf.Tensor2D };
        // R₁₂ = R₁₁⁻ᵀ·G₁₂; then the Schur complement G₂₂ − R₁₂ᵀ·R₁₂
        const r12 = tf.matMul(inv, tf.slice(current, [0, b], [b, rest]), true, false);
        const next = tf.sub(tf.slice(current, [b, b], [rest, rest]), tf.matMul(r12, r12, true, false));
        const row = tf.concat(at ? [tf.zeros([b, at]), r11T, r12] : [r11T, r12], 1) as tf.Tensor2D;
        return { row, next: next as tf.Tensor2D };
      });
      r11T.dispose();
      rows.push(step.row);
      current.dispose();
      s = step.next ?? null;
    }
    const r = (rows.length === 1 ? tf.clone(rows[0] as tf.Tensor2D) : tf.concat(rows, 0)) as tf.Tensor2D;
    tf.dispose(rows);
    return { r, diagInv };
  } catch (err) {
    tf.dispose([...rows, ...diagInv]);
    throw err;
  } finally {
    s?.dispose();
  }
}

/**
 * Q = X·R⁻¹ for upper triangular R (n×n) by blocked forward substitution over column blocks:
 * Q_j = (X_j − Q_{<j}·R_{<j, j})·R_jj⁻¹, products on the backend.
 */
function solveRight(x: tf.Tensor2D, r: tf.Tensor2D, diagInv: tf.Tensor2D[], block: number): tf.Tensor2D {
  const m = x.shape[0];
  return tf.tidy(() => {
    // the columns of Q made so far
    let done: tf.Tensor2D | undefined;
    for (let j = 0; j < diagInv.length; j++) {
      const inv = diagInv[j] as tf.Tensor2D;
      const at = j * block;
      const b = inv.shape[0];
      let xj = tf.slice(x, [0, at], [m, b]) as tf.Tensor2D;
      if (done) xj = tf.sub(xj, tf.matMul(done, tf.slice(r, [0, at], [at, b]))) as tf.Tensor2D;
      const qj = tf.matMul(xj, inv) as tf.Tensor2D;
      done = done ? (tf.concat([done, qj], 1) as tf.Tensor2D) : qj;
    }
    return done as tf.Tensor2D;
  });
}

/**
 * Thin QR of a tall X (m×n, m ≥ n, float32 on the backend) by CholeskyQR2 with a blocked Cholesky
 * (Fukaya et al. 2014): R₁ from XᵀX, Q₁ = X·R₁⁻¹, R₂ from Q₁ᵀQ₁, Q = Q₁·R₂⁻¹, R = R₂·R₁. Everything
 * of size m·n stays on the backend (three Gram products, two blocked solves); n/`block` small
 * read-backs a Cholesky, one scalar for the check. In float32 it is accurate for κ(X) up to about
 * 10³; where a Cholesky fails or QᵀQ strays from I by more than `tolerance`, it returns null and the
 * caller takes a Householder path. The caller keeps X. `block` (default 64): each diagonal block's
 * Cholesky and inverse run on the host, n·block² flops a pass in all, against n/block round trips;
 * on the H200 at 11008×4096 (warm) 64 took 0.29 s, 96 0.37 s, 128 0.40 s, 192 0.70 s and 256 0.99 s
 * (BENCHMARKS.md, 2026-12-04, issue 13).
 * @internal
 */
export async function choleskyQr2Blocked(
  x: tf.Tensor2D,
  options: { block?: number; tolerance?: number } = {},
): Promise<{ q: tf.Tensor2D; r: tf.Tensor2D } | null> {
  const block = options.block ?? 64;
  const tolerance = options.tolerance ?? 1e-5;
  const [m, n] = x.shape;
  if (m < n) return null;
  const gram = (t: tf.Tensor2D) => tf.matMul(t, t, true, false) as tf.Tensor2D;
  let q: tf.Tensor2D = x;
  let r: tf.Tensor2D | null = null;
  try {
    for (let pass = 0; pass < 2; pass++) {
      const g = gram(q);
      let factor: Awaited<ReturnType<typeof blockedCholesky>>;
      try {
        factor = await blockedCholesky(g, block);
      } finally {
        g.dispose();
      }
      if (!factor) return null;
      const next = solveRight(q, factor.r, factor.diagInv, block);
      tf.dispose(factor.diagInv);
      if (q !== x) q.dispose();
      q = next;
      const prevR: tf.Tensor2D | null = r;
      r = prevR ? (tf.matMul(factor.r, prevR) as tf.Tensor2D) : factor.r;
      if (prevR) {
        prevR.dispose();
        factor.r.dispose();
      }
    }
    const finalQ = q;
    // I made on the backend (tf.eye fills n² entries on the host and uploads them; tfjs-wasm's float32 oneHot writes int32 bits, so int32 and a cast)
    const deviation = tf.tidy(() => {
      const eye = n < 2 ? tf.eye(n) : tf.cast(tf.oneHot(tf.range(0, n, 1, 'int32') as tf.Tensor1D, n), 'float32');
      return tf.max(tf.abs(tf.sub(gram(finalQ), eye)));
    });
    const dev = (await deviation.data())[0] as number;
    deviation.dispose();
    if (!(dev <= tolerance)) return null;
    const out = { q, r: r as tf.Tensor2D };
    q = x;
    r = null;
    return out;
  } finally {
    if (q !== x) q.dispose();
    r?.dispose();
  }
}
