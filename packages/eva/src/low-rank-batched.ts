/**
 * torch.svd_lowrank for a stack of matrices at once, float32 on the active backend: what EVA's
 * incremental PCA spends its time in. Every large product runs on the backend as one batched matMul
 * over all the layers of a shape; only q×q Gram matrices (and the q×q core of the last step) travel to
 * the CPU, where they are factored in float64. Results equal torch's (same sketch, same algorithm) up
 * to float32 rounding: an orthonormal basis of the same subspace gives the same decomposition, so the
 * QR method does not matter.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, cholesky, eye64, matmul64, qr, solveTriangular, svd, transpose64 } from '@lora/linalg';

/** What {@link svdLowRankBatched} returns for each matrix of the stack. */
export interface BatchedComponents {
  /** The singular values, descending (min(q, m, d) of them), float64. */
  S: Float64Array[];
  /** The first `k` right singular vectors as rows: [L, k, d], float32, unflipped. The caller owns it. */
  Vt: tf.Tensor3D;
}

/** wasm's matMul with a transposed operand is ~10× slower than transposing the thin factor first. */
function transposeIsSlow(): boolean {
  return tf.getBackend() === 'wasm';
}

const swapLast = (x: tf.Tensor) => tf.transpose(x, x.rank === 3 ? [0, 2, 1] : [1, 0]);

/** `mᵀ·x` (mT) or `m·x` for a stack m [L, r, c] and x [L, ·, q] or a shared [·, q]. */
function product(m: tf.Tensor3D, x: tf.Tensor, mT: boolean): tf.Tensor3D {
  return tf.tidy(() => {
    if (!mT) return tf.matMul(m, x) as tf.Tensor3D;
    if (transposeIsSlow()) return swapLast(tf.matMul(swapLast(x), m)) as tf.Tensor3D;
    return tf.matMul(m, x, true, false) as tf.Tensor3D;
  });
}

/** The q×q Gram matrices yᵀ·y of a stack [L, r, q], read to the CPU. */
async function grams(y: tf.Tensor3D): Promise<Float64Array[]> {
  const [L, , q] = y.shape;
  const g = product(y, y, true);
  const values = await g.data();
  g.dispose();
  return Array.from({ length: L }, (_, l) => Float64Array.from(values.subarray(l * q * q, (l + 1) * q * q)));
}

/** Upper-triangular R with Rᵀ·R = G, or null when G is not positive definite in float64. */
function choleskyR(g: Float64Array, q: number): Matrix64 | null {
  try {
    return transpose64(cholesky({ rows: q, cols: q, data: g }));
  } catch {
    return null;
  }
}

function maxDeviationFromIdentity(g: Float64Array, q: number): number {
  let dev = 0;
  for (let i = 0; i < q; i++)
    for (let j = 0; j < q; j++) dev = Math.max(dev, Math.abs((g[i * q + j] as number) - (i === j ? 1 : 0)));
  return dev;
}

/**
 * Orthonormal bases of the columns of each matrix of a stack y [L, r, q] (r ≥ q), with R such that
 * y = Q·R (R upper triangular, float64 on the CPU). Shifted CholeskyQR: each pass factors the Gram
 * matrix (shifted by a small multiple of its trace when rounding made it indefinite) and multiplies by
 * R⁻¹ on the backend; passes repeat until QᵀQ is the identity to float32 precision (two passes for a
 * well-conditioned y, three after a shift). A matrix that will not converge (exactly rank-deficient)
 * is read back and orthonormalised by Householder QR in float64. Takes ownership of y.
 */
export async function orthonormalize(y: tf.Tensor3D): Promise<{ Q: tf.Tensor3D; R: Matrix64[] }> {
  const [L, r, q] = y.shape;
  const total = Array.from({ length: L }, () => eye64(q));
  const done = new Array<boolean>(L).fill(false);
  let Q = y;
  for (let pass = 0; pass < 5 && done.some((d) => !d); pass++) {
    const g = await grams(Q);
    const inverses = new Float32Array(L * q * q);
    for (let l = 0; l < L; l++) {
      const gl = g[l] as Float64Array;
      if (done[l]) {
        for (let i = 0; i < q; i++) inverses[l * q * q + i * q + i] = 1;
        continue;
      }
      const dev = maxDeviationFromIdentity(gl, q);
      let R = dev < 1e-5 ? eye64(q) : choleskyR(gl, q);
      let shifted = false;
      if (!R) {
        let trace = 0;
        for (let i = 0; i < q; i++) trace += gl[i * q + i] as number;
        for (let s = 1e-6 * trace; !R && s > 0 && s < trace; s *= 100) {
          const shiftedG = Float64Array.from(gl);
          for (let i = 0; i < q; i++) shiftedG[i * q + i] = (shiftedG[i * q + i] as number) + s;
          R = choleskyR(shiftedG, q);
          shifted = R !== null;
        }
      }
      if (!R) {
        // exactly rank-deficient (or zero): left to the Householder fallback below
        for (let i = 0; i < q; i++) inverses[l * q * q + i * q + i] = 1;
        continue;
      }
      total[l] = matmul64(R, total[l] as Matrix64);
      // this pass leaves Q orthonormal to float32 precision when Q was already close (CholeskyQR2's
      // second pass); a first pass, or one after a shift, needs another
      if (dev < 0.5 && !shifted) done[l] = true;
      const inv = solveTriangular(R, eye64(q), { upper: true });
      inverses.set(Float32Array.from(inv.data), l * q * q);
    }
    const rInv = tf.tensor3d(inverses, [L, q, q]);
    const next = tf.matMul(Q, rInv) as tf.Tensor3D;
    rInv.dispose();
    Q.dispose();
    Q = next;
  }
  if (done.every((d) => d)) return { Q, R: total };
  // Householder in float64 for the matrices CholeskyQR could not orthonormalise; R from the start
  const values = await Q.data();
  const out = Float32Array.from(values);
  for (let l = 0; l < L; l++) {
    if (done[l]) continue;
    const m: Matrix64 = { rows: r, cols: q, data: Float64Array.from(values.subarray(l * r * q, (l + 1) * r * q)) };
    const f = qr(m);
    out.set(Float32Array.from(f.Q.data), l * r * q);
    total[l] = matmul64(f.R, total[l] as Matrix64);
  }
  Q.dispose();
  return { Q: tf.tensor3d(out, [L, r, q]), R: total };
}

/** Options of {@link svdLowRankBatched}: torch.svd_lowrank's, with the sketch given. */
export interface SvdLowRankBatchedOptions {
  /** Columns of the sketch. */
  q: number;
  /** Subspace iterations. */
  niter: number;
  /** How many right singular vectors to return. */
  k: number;
  /**
   * The Gaussian sketch torch draws (`randn(cols, q)` with cols = d for a tall matrix, m for a wide
   * one), shared by every matrix of the stack: PEFT reseeds before each decomposition.
   */
  sketch: tf.Tensor2D;
}

/**
 * `torch.svd_lowrank(M_l, q, niter)` for every matrix of a stack M [L, m, d], returning the singular
 * values and the first k rows of Vᵀ (the principal directions). Needs q < min(m, d); for q ≥ min(m, d)
 * torch's result is the exact SVD, see {@link svdExactBatched}. Leaves M to the caller.
 *
 * torch sketches the matrix when it is tall (m ≥ d) and its transpose otherwise; with A that matrix:
 * Q = orth(A·R), then niter times Q = orth(A·orth(Aᵀ·Q)), then the SVD of B = Qᵀ·A. That SVD is taken
 * here from C = Aᵀ·Q = Bᵀ: C = Q_c·R_c (CholeskyQR), R_c = U·S·Vᵀ in float64, so B = V·S·(Q_c·U)ᵀ.
 */
export async function svdLowRankBatched(M: tf.Tensor3D, options: SvdLowRankBatchedOptions): Promise<BatchedComponents> {
  const [, m, d] = M.shape;
  const { q, niter, k, sketch } = options;
  const tall = m >= d;
  // A·x and Aᵀ·x with A = M (tall) or Mᵀ (wide), never formed
  const aTimes = (x: tf.Tensor) => product(M, x, !tall);
  const aTTimes = (x: tf.Tensor) => product(M, x, tall);
  let Q = (await orthonormalize(aTimes(sketch))).Q;
  for (let i = 0; i < niter; i++) {
    const inner = aTTimes(Q);
    Q.dispose();
    const Z = (await orthonormalize(inner)).Q;
    const outer = aTimes(Z);
    Z.dispose();
    Q = (await orthonormalize(outer)).Q;
  }
  const C = aTTimes(Q);
  const { Q: Qc, R } = await orthonormalize(C);
  const L = R.length;
  const S: Float64Array[] = [];
  const rotation = new Float32Array(L * q * k);
  for (let l = 0; l < L; l++) {
    const f = svd(R[l] as Matrix64); // R = U·S·Vh
    S.push(f.S);
    // tall: Vt = (Q_c·U)ᵀ; wide (torch swapped U and V): Vt = (Q·V)ᵀ with V = Vhᵀ
    for (let i = 0; i < q; i++)
      for (let j = 0; j < k; j++)
        rotation[l * q * k + i * k + j] = (tall ? f.U.data[i * q + j] : f.Vh.data[j * q + i]) as number;
  }
  const W = tf.tensor3d(rotation, [L, q, k]);
  const basis = tall ? Qc : Q;
  const Vt = tf.tidy(() => swapLast(tf.matMul(basis, W)) as tf.Tensor3D);
  tf.dispose([W, Qc, Q]);
  return { S, Vt };
}

/**
 * The exact thin SVD of each matrix of a stack M [L, m, d], float64 on the CPU: what torch.svd_lowrank
 * returns when its sketch spans the whole matrix (q ≥ min(m, d)), which only happens for small
 * matrices. Leaves M to the caller.
 */
export async function svdExactBatched(M: tf.Tensor3D, k: number): Promise<BatchedComponents> {
  const [L, m, d] = M.shape;
  const values = await M.data();
  const S: Float64Array[] = [];
  const rows = new Float32Array(L * k * d);
  for (let l = 0; l < L; l++) {
    const f = svd({ rows: m, cols: d, data: Float64Array.from(values.subarray(l * m * d, (l + 1) * m * d)) });
    S.push(f.S);
    rows.set(Float32Array.from(f.Vh.data.subarray(0, k * d)), l * k * d);
  }
  return { S, Vt: tf.tensor3d(rows, [L, k, d]) };
}
