/**
 * torch.svd_lowrank for a stack of matrices at once, float32 on the active backend: what EVA's
 * incremental PCA spends its time in. Every large product runs on the backend, as one batched matMul
 * over all the layers of a shape (on wasm: matrix by matrix, see {@link perMatrix}); only q×q Gram
 * matrices (and the q×q core of the last step) travel to the CPU, where they are factored in float64.
 * Results equal torch's (same sketch, same algorithm) up to float32 rounding: an orthonormal basis of
 * the same subspace gives the same decomposition, so the QR method does not matter.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, eye64, matmul64, qr, svd } from '@lora/linalg';
import { choleskyInverseStack, jacobiSvdStack } from './small-factor';

/** What {@link svdLowRankBatched} returns for each matrix of the stack. */
export interface BatchedComponents {
  /** The singular values, descending (min(q, m, d) of them), float64. */
  S: Float64Array[];
  /** The first `k` right singular vectors as rows: [L, k, d] (a list on wasm), float32, unflipped. The caller owns it. */
  Vt: Stack;
}

/**
 * wasm runs only plain 2-D matMuls fast (XNNPACK, ~25 GFLOP/s on one core here); its batched (rank-3)
 * and transposed matMuls take a generic kernel ~10× slower (2.4 GFLOP/s), and splitting a stack into
 * its matrices (slice) runs at ~0.2 GB/s (measured 2026-12-02). There a stack is kept as a list of
 * 2-D matrices from the start, and every product is a plain 2-D matMul, the thin operand transposed.
 */
export function perMatrix(): boolean {
  return tf.getBackend() === 'wasm';
}

/** L matrices of one shape: one [L, r, c] tensor, or (on wasm, see {@link perMatrix}) L [r, c] tensors. */
export type Stack = tf.Tensor3D | tf.Tensor2D[];

/** [L, r, c] of a stack. */
export function stackShape(s: Stack): [number, number, number] {
  if (!Array.isArray(s)) return s.shape;
  const [r, c] = (s[0] as tf.Tensor2D).shape;
  return [s.length, r, c];
}

export function disposeStack(s: Stack): void {
  tf.dispose(s);
}

/** The values of a stack, matrix after matrix (one read for a tensor; free reads on wasm). */
export async function stackValues(s: Stack): Promise<Float32Array> {
  if (!Array.isArray(s)) return (await s.data()) as Float32Array;
  const [L, r, c] = stackShape(s);
  const out = new Float32Array(L * r * c);
  for (let l = 0; l < L; l++) out.set((await (s[l] as tf.Tensor2D).data()) as Float32Array, l * r * c);
  return out;
}

/** A stack like `like` (a list when it is one) from values [L, r, c]. */
function stackFrom(values: Float32Array, shape: [number, number, number], like: Stack): Stack {
  const [L, r, c] = shape;
  if (!Array.isArray(like)) return tf.tensor3d(values, shape);
  return Array.from({ length: L }, (_, l) => tf.tensor2d(values.subarray(l * r * c, (l + 1) * r * c), [r, c]));
}

/**
 * `op(m)·x` for each matrix of a stack, op transposing when `transposed`; x is a stack of matching
 * matrices or one matrix shared by all. Leaves its operands.
 */
export function stackMatMul(m: Stack, x: Stack | tf.Tensor2D, transposed: boolean): Stack {
  return tf.tidy(() => {
    if (!Array.isArray(m))
      return (transposed ? tf.matMul(m, x as tf.Tensor, true, false) : tf.matMul(m, x as tf.Tensor)) as tf.Tensor3D;
    const shared = !Array.isArray(x) ? (x as tf.Tensor2D) : null;
    const xs = x as tf.Tensor2D[];
    return m.map((ml, l) => {
      const xl = shared ?? (xs[l] as tf.Tensor2D);
      return transposed ? tf.transpose(tf.matMul(tf.transpose(xl), ml)) : tf.matMul(ml, xl);
    }) as tf.Tensor2D[];
  }) as Stack;
}

/** The q×q Gram matrices yᵀ·y of a stack [L, r, q], read to the CPU (one read for a stacked tensor). */
async function grams(y: Stack): Promise<Float32Array> {
  if (!Array.isArray(y)) {
    const g = tf.matMul(y, y, true, false);
    const values = (await g.data()) as Float32Array;
    g.dispose();
    return values;
  }
  const g = tf.tidy(() => y.map((yl) => tf.matMul(tf.transpose(yl), yl) as tf.Tensor2D));
  try {
    return await stackValues(g);
  } finally {
    tf.dispose(g);
  }
}

/** `y·b` for stacks [L, r, c] and b [L, c, q] given as values. */
function timesValues(y: Stack, values: Float32Array, c: number, q: number): Stack {
  if (!Array.isArray(y)) {
    const b = tf.tensor3d(values, [y.shape[0], c, q]);
    const out = tf.matMul(y, b) as tf.Tensor3D;
    b.dispose();
    return out;
  }
  return y.map((yl, l) => {
    const b = tf.tensor2d(values.subarray(l * c * q, (l + 1) * c * q), [c, q]);
    const out = tf.matMul(yl, b) as tf.Tensor2D;
    b.dispose();
    return out;
  });
}

/**
 * The inverse of the Cholesky factor of the q×q Gram matrix g (at offset o of a stack), shifted by
 * `shift` on the diagonal: writes R⁻¹ (R = Lᵀ upper triangular, Rᵀ·R = g) into `out` at offset o and
 * returns R, or returns null when g (shifted) is not positive definite in float64. Two triangular
 * sweeps of q³/6 multiply-adds each: this runs for every matrix of a stack at every step.
 */
function choleskyInverse(
  g: ArrayLike<number>,
  o: number,
  q: number,
  shift: number,
  out: Float32Array,
  wantR: boolean,
): Float64Array | null {
  const l = new Float64Array(q * q);
  for (let j = 0; j < q; j++) {
    let s = (g[o + j * q + j] as number) + shift;
    for (let k = 0; k < j; k++) s -= (l[j * q + k] as number) ** 2;
    if (!(s > 0) || !Number.isFinite(s)) return null;
    const d = Math.sqrt(s);
    l[j * q + j] = d;
    for (let i = j + 1; i < q; i++) {
      // the Gram matrix is symmetric up to float32 rounding: its lower triangle, as cholesky() reads
      let t = g[o + i * q + j] as number;
      for (let k = 0; k < j; k++) t -= (l[i * q + k] as number) * (l[j * q + k] as number);
      l[i * q + j] = t / d;
    }
  }
  // L⁻¹ by forward substitution, column by column; R⁻¹ = (L⁻¹)ᵀ
  const inv = new Float64Array(q * q);
  for (let c = 0; c < q; c++) {
    inv[c * q + c] = 1 / (l[c * q + c] as number);
    for (let i = c + 1; i < q; i++) {
      let t = 0;
      for (let k = c; k < i; k++) t -= (l[i * q + k] as number) * (inv[k * q + c] as number);
      inv[i * q + c] = t / (l[i * q + i] as number);
    }
  }
  for (let i = 0; i < q; i++) for (let j = 0; j <= i; j++) out[o + j * q + i] = inv[i * q + j] as number;
  if (!wantR) return l;
  const r = new Float64Array(q * q);
  for (let i = 0; i < q; i++) for (let j = 0; j <= i; j++) r[j * q + i] = l[i * q + j] as number;
  return r;
}

function maxDeviationFromIdentity(g: ArrayLike<number>, o: number, q: number): number {
  let dev = 0;
  for (let i = 0; i < q; i++)
    for (let j = 0; j < q; j++) dev = Math.max(dev, Math.abs((g[o + i * q + j] as number) - (i === j ? 1 : 0)));
  return dev;
}

/** Options of {@link orthonormalize}. */
export interface OrthonormalizeOptions {
  /** Return R (y = Q·R); only the last step of a decomposition needs it. Default true. */
  wantR?: boolean;
  /**
   * Stop after one CholeskyQR pass unless it needed a shift (default false: orthonormal to float32
   * precision). One pass leaves ‖QᵀQ − I‖ ≈ κ(y)²·2⁻²⁴, a well-conditioned basis of the same span:
   * enough for the bases inside a subspace iteration, which only pass their span on.
   */
  onePass?: boolean;
}

/**
 * Orthonormal bases of the columns of each matrix of a stack y [L, r, q] (r ≥ q), with R such that
 * y = Q·R (R upper triangular, float64 on the CPU) when asked. Shifted CholeskyQR: each pass factors
 * the Gram matrix (shifted by a small multiple of its trace when rounding made it indefinite) and
 * multiplies by R⁻¹ on the backend; passes repeat until QᵀQ is the identity to float32 precision (two
 * passes for a well-conditioned y, three after a shift). A matrix that will not converge (exactly
 * rank-deficient) is read back and orthonormalised by Householder QR in float64. Takes ownership of y.
 */
export async function orthonormalize(
  y: Stack,
  options: OrthonormalizeOptions = {},
): Promise<{ Q: Stack; R: Matrix64[] }> {
  const wantR = options.wantR ?? true;
  const [L, r, q] = stackShape(y);
  const total = wantR ? Array.from({ length: L }, () => eye64(q)) : [];
  const done = new Array<boolean>(L).fill(false);
  let Q = y;
  for (let pass = 0; pass < 5 && done.some((d) => !d); pass++) {
    const g = await grams(Q);
    const inverses = new Float32Array(L * q * q);
    for (let l = 0; l < L; l++) {
      const o = l * q * q;
      const identity = () => {
        for (let i = 0; i < q; i++) inverses[o + i * q + i] = 1;
      };
      if (done[l]) {
        identity();
        continue;
      }
      const dev = maxDeviationFromIdentity(g, o, q);
      if (dev < 1e-5) {
        identity();
        done[l] = true;
        continue;
      }
      let R = choleskyInverse(g, o, q, 0, inverses, wantR);
      let shifted = false;
      if (!R) {
        let trace = 0;
        for (let i = 0; i < q; i++) trace += g[o + i * q + i] as number;
        for (let s = 1e-6 * trace; !R && s > 0 && s < trace; s *= 100) {
          R = choleskyInverse(g, o, q, s, inverses, wantR);
          shifted = R !== null;
        }
      }
      if (!R) {
        // exactly rank-deficient (or zero): left to the Householder fallback below
        inverses.fill(0, o, o + q * q);
        identity();
        continue;
      }
      if (wantR) total[l] = matmul64({ rows: q, cols: q, data: R }, total[l] as Matrix64);
      // this pass leaves Q orthonormal to float32 precision when Q was already close (CholeskyQR2's
      // second pass); a first pass, or one after a shift, needs another
      if ((dev < 0.5 || options.onePass) && !shifted) done[l] = true;
    }
    const next = timesValues(Q, inverses, q, q);
    disposeStack(Q);
    Q = next;
  }
  if (done.every((d) => d)) return { Q, R: total };
  // Householder in float64 for the matrices CholeskyQR could not orthonormalise; R from the start
  const values = await stackValues(Q);
  const out = Float32Array.from(values);
  for (let l = 0; l < L; l++) {
    if (done[l]) continue;
    const m: Matrix64 = { rows: r, cols: q, data: Float64Array.from(values.subarray(l * r * q, (l + 1) * r * q)) };
    const f = qr(m);
    out.set(Float32Array.from(f.Q.data), l * r * q);
    if (wantR) total[l] = matmul64(f.R, total[l] as Matrix64);
  }
  const result = stackFrom(out, [L, r, q], Q);
  disposeStack(Q);
  return { Q: result, R: total };
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
export async function svdLowRankBatched(M: Stack, options: SvdLowRankBatchedOptions): Promise<BatchedComponents> {
  const [, m, d] = stackShape(M);
  const { q, niter, k, sketch } = options;
  const tall = m >= d;
  // A·x and Aᵀ·x with A = M (tall) or Mᵀ (wide), never formed
  const aTimes = (x: Stack | tf.Tensor2D) => stackMatMul(M, x, !tall);
  const aTTimes = (x: Stack) => stackMatMul(M, x, tall);
  // only the span of each basis matters until the last step (one CholeskyQR pass each: one read-back);
  // the last Q and C are orthonormal to float32 precision, and R is wanted from C's factorisation only
  const inside = { wantR: false, onePass: true };
  let Q = (await orthonormalize(aTimes(sketch), niter > 0 ? inside : { wantR: false })).Q;
  for (let i = 0; i < niter; i++) {
    const inner = aTTimes(Q);
    disposeStack(Q);
    const Z = (await orthonormalize(inner, inside)).Q;
    const outer = aTimes(Z);
    disposeStack(Z);
    Q = (await orthonormalize(outer, i === niter - 1 ? { wantR: false } : inside)).Q;
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
  const V = timesValues(tall ? Qc : Q, rotation, q, k);
  const Vt: Stack = tf.tidy(() =>
    Array.isArray(V) ? V.map((v) => tf.transpose(v) as tf.Tensor2D) : (tf.transpose(V, [0, 2, 1]) as tf.Tensor3D),
  );
  disposeStack(V);
  disposeStack(Qc);
  disposeStack(Q);
  return { S, Vt };
}

/**
 * The exact thin SVD of each matrix of a stack M [L, m, d], float64 on the CPU: what torch.svd_lowrank
 * returns when its sketch spans the whole matrix (q ≥ min(m, d)), which only happens for small
 * matrices. Leaves M to the caller.
 */
export async function svdExactBatched(M: Stack, k: number): Promise<BatchedComponents> {
  const [L, m, d] = stackShape(M);
  const values = await stackValues(M);
  const S: Float64Array[] = [];
  const rows = new Float32Array(L * k * d);
  for (let l = 0; l < L; l++) {
    const f = svd({ rows: m, cols: d, data: Float64Array.from(values.subarray(l * m * d, (l + 1) * m * d)) });
    S.push(f.S);
    rows.set(Float32Array.from(f.Vh.data.subarray(0, k * d)), l * k * d);
  }
  return { S, Vt: stackFrom(rows, [L, k, d], M) };
}

/**
 * `passes` shifted CholeskyQR passes over each matrix of a stack y [L, r, q], on the backend: the
 * Gram matrix, the inverse of its (shifted) Cholesky factor and the product, with no read-back.
 * One pass leaves a well-conditioned basis of the same span (what a subspace iteration passes on);
 * three leave Q orthonormal to float32 precision after a shift (two without one). Leaves y.
 */
export function orthonormalizeOnBackend(y: tf.Tensor3D, passes: number): tf.Tensor3D {
  return tf.tidy(() => {
    let Q = y;
    for (let p = 0; p < passes; p++) Q = tf.matMul(Q, choleskyInverseStack(tf.matMul(Q, Q, true, false)));
    return Q;
  });
}

/**
 * {@link svdLowRankBatched} with every step on the backend and nothing read back: the bases by
 * {@link orthonormalizeOnBackend}, the q×q core by a one-sided Jacobi SVD in one dispatch for the
 * whole stack. Returns the singular values [L, q] and the first k rows of Vᵀ [L, k, d] as tensors
 * (the caller owns them). Needs {@link factorsOnBackend}; leaves M.
 */
export function svdLowRankOnBackend(
  M: tf.Tensor3D,
  options: SvdLowRankBatchedOptions,
): { S: tf.Tensor2D; Vt: tf.Tensor3D } {
  const [, m, d] = M.shape;
  const { niter, k, sketch } = options;
  const tall = m >= d;
  return tf.tidy(() => {
    const aTimes = (x: tf.Tensor) => (tall ? tf.matMul(M, x) : tf.matMul(M, x, true, false)) as tf.Tensor3D;
    const aTTimes = (x: tf.Tensor) => (tall ? tf.matMul(M, x, true, false) : tf.matMul(M, x)) as tf.Tensor3D;
    let Q = orthonormalizeOnBackend(aTimes(sketch), niter > 0 ? 1 : 3);
    for (let i = 0; i < niter; i++) {
      const Z = orthonormalizeOnBackend(aTTimes(Q), 1);
      Q = orthonormalizeOnBackend(aTimes(Z), i === niter - 1 ? 3 : 1);
    }
    const C = aTTimes(Q);
    const Qc = orthonormalizeOnBackend(C, 3);
    // C = Q_c·R_c with R_c = Q_cᵀ·C; R_c = U·S·Vᵀ (tall: Vt = (Q_c·U)ᵀ; wide: Vt = (Q·V)ᵀ)
    const { W, S } = jacobiSvdStack(tf.matMul(Qc, C, true, false) as tf.Tensor3D, tall);
    const V = tf.matMul(tall ? Qc : Q, tf.slice(W, [0, 0, 0], [-1, -1, k]));
    return { S, Vt: tf.transpose(V, [0, 2, 1]) as tf.Tensor3D };
  });
}
