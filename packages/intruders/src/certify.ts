import * as tf from '@tensorflow/tfjs-core';
import { eigh, matrix64 } from '@lora/linalg';

/**
 * How far below the threshold a cosine's upper bound must lie for a direction to be called an
 * intruder without W's SVD (in cosine units). The bound is exact arithmetic's; its float32 inputs
 * move it by ~1e-5 at most on the 123M shapes, so 1e-3 leaves a factor of 100. A direction closer
 * to ε than this is decided from W's SVD, as PEFT decides it.
 */
export const CERTIFY_MARGIN = 1e-3;

/**
 * Upper bounds on max_j |⟨u_i, u₀_j⟩| over W's left singular vectors u₀_j, for each column u_i of
 * `starts` (m×t, unit columns), without W's SVD: `steps` steps of Lanczos on M = W·Wᵀ from each u_i
 * (all columns at once on the backend: two products with W per step, full re-orthogonalisation), then
 * on the host the Gauss rule of u_i's spectral measure μ_i = Σ_j ⟨u_i, u₀_j⟩²·δ(s₀_j²) and the
 * Chebyshev–Markov–Stieltjes inequalities: no atom of μ_i weighs more than the largest sum of two
 * adjacent Gauss weights (the largest single weight when the Krylov space is invariant). Each
 * ⟨u_i, u₀_j⟩² is at most the atom at s₀_j², so its square root bounds the cosine. Valid for m ≤ n
 * (W's left singular vectors span all of R^m); for a tall W, W·Wᵀ's null space is not in U₀ and the
 * bound does not apply. See the README's "Intruders without W's SVD".
 */
export async function cosineUpperBounds(w: tf.Tensor2D, starts: tf.Tensor2D, steps: number): Promise<Float64Array> {
  const [m, t] = starts.shape;
  const n = w.shape[1];
  if (m > n) throw new Error(`cosineUpperBounds: W is ${m}×${n}; the bound needs m ≤ n`);
  const count = Math.max(1, Math.min(steps, m));
  const wT = tf.transpose(w) as tf.Tensor2D;
  const basis: tf.Tensor2D[] = [tf.clone(starts)];
  const alphas: tf.Tensor1D[] = [];
  const betas: tf.Tensor1D[] = [];
  try {
    for (let j = 0; j < count; j++) {
      const q = basis[j] as tf.Tensor2D;
      const next = tf.tidy(() => {
        let z = tf.matMul(w, tf.matMul(wT, q)) as tf.Tensor2D;
        const alpha = tf.sum(tf.mul(q, z), 0) as tf.Tensor1D;
        // full re-orthogonalisation, twice ("twice is enough"), each column against its own basis
        const stacked = tf.stack(basis) as tf.Tensor3D; // [j + 1, m, t]
        for (let pass = 0; pass < 2; pass++) {
          const coef = tf.sum(tf.mul(stacked, tf.expandDims(z, 0)), 1, true); // [j + 1, 1, t]
          z = tf.sub(z, tf.sum(tf.mul(stacked, coef), 0)) as tf.Tensor2D;
        }
        const beta = tf.norm(z, 'euclidean', 0) as tf.Tensor1D;
        const q1 = tf.div(z, tf.maximum(beta, 1e-30)) as tf.Tensor2D;
        return { alpha, beta, q1 };
      });
      alphas.push(next.alpha);
      betas.push(next.beta);
      basis.push(next.q1);
    }
    const both = tf.tidy(() => tf.stack([tf.stack(alphas), tf.stack(betas)]));
    const values = (await both.data()) as Float32Array;
    both.dispose();
    const out = new Float64Array(t);
    for (let c = 0; c < t; c++) {
      const a = Array.from({ length: count }, (_, j) => values[j * t + c] as number);
      const b = Array.from({ length: count }, (_, j) => values[(count + j) * t + c] as number);
      out[c] = Math.sqrt(Math.min(1, atomBound(a, b)));
    }
    return out;
  } finally {
    tf.dispose([wT, ...basis, ...alphas, ...betas]);
  }
}

/**
 * The largest mass any single point can carry in a unit measure whose Lanczos (Jacobi) coefficients
 * are α₀…α_{N−1}, β₀…β_{N−1} (β_j couples steps j and j + 1; β_{N−1} is the last residual): the
 * N-point Gauss rule's nodes x₁ < … < x_N and weights w_ν (squared first components of the
 * eigenvectors of the Jacobi matrix T_N), then by Chebyshev–Markov–Stieltjes
 * Σ_{ν<l} w_ν ≤ F(x_l − 0) ≤ F(x_l) ≤ Σ_{ν≤l} w_ν, so a point at x_l carries at most w_l, one in
 * (x_l, x_{l+1}) at most w_l + w_{l+1}, one below x₁ at most w₁, one above x_N at most w_N. When a β_j
 * vanishes (relative to the largest |α|) the measure is the (j + 1)-point rule itself and the bound is
 * its largest weight.
 */
export function atomBound(alpha: readonly number[], beta: readonly number[]): number {
  const scale = Math.max(...alpha.map(Math.abs), ...beta.map(Math.abs), Number.MIN_VALUE);
  let size = alpha.length;
  let invariant = false;
  for (let j = 0; j < alpha.length; j++)
    if (!((beta[j] as number) > 1e-6 * scale)) {
      size = j + 1;
      invariant = true;
      break;
    }
  const t = matrix64(size, size);
  for (let j = 0; j < size; j++) {
    t.data[j * size + j] = alpha[j] as number;
    if (j + 1 < size) {
      t.data[j * size + j + 1] = beta[j] as number;
      t.data[(j + 1) * size + j] = beta[j] as number;
    }
  }
  // eigenvalues ascending; the weight of node ν is the squared first component of its eigenvector
  const { vectors } = eigh(t);
  const weights = Array.from({ length: size }, (_, c) => (vectors.data[c] as number) ** 2);
  if (invariant || size === 1) return Math.max(...weights);
  let worst = 0;
  for (let l = 0; l + 1 < size; l++) worst = Math.max(worst, (weights[l] as number) + (weights[l + 1] as number));
  return worst;
}

/** Lanczos steps for threshold ε: enough that a spread measure's adjacent Gauss weights fall below ε² (about 8/ε², 16 to 48). */
export function certifySteps(epsilon: number): number {
  return Math.min(48, Math.max(16, Math.ceil(8 / (epsilon * epsilon))));
}
