import * as tf from '@tensorflow/tfjs-core';
import { cholesky, type Matrix64, matrix64, tridiagonalEigenFirst } from '@lora/linalg';

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
export async function cosineUpperBounds(
  w: tf.Tensor2D,
  starts: tf.Tensor2D,
  steps: number,
  target?: number,
): Promise<Float64Array> {
  const [m, t] = starts.shape;
  const n = w.shape[1];
  if (m > n) throw new Error(`cosineUpperBounds: W is ${m}×${n}; the bound needs m ≤ n`);
  const wT = tf.transpose(w) as tf.Tensor2D;
  try {
    // with a target (a cosine), stop early once every bound is below it
    const enough =
      target === undefined
        ? undefined
        : (a: number[][], b: number[][]) => a.every((ac, c) => Math.sqrt(atomBound(ac, b[c] as number[])) < target);
    // rows q (t×m): q·W·Wᵀ, Wᵀ formed (a product with a transposed operand is slow on wasm)
    const { alpha, beta } = await lanczosColumns(
      (q) => tf.matMul(tf.matMul(q, w), wT) as tf.Tensor2D,
      starts,
      steps,
      enough,
    );
    const out = new Float64Array(t);
    for (let c = 0; c < t; c++) out[c] = Math.sqrt(Math.min(1, atomBound(alpha[c] as number[], beta[c] as number[])));
    return out;
  } finally {
    wT.dispose();
  }
}

/**
 * `steps` steps of Lanczos on a symmetric operator M (n×n, on the backend) from each column of
 * `starts` (n×t, unit columns), all columns at once, each against its own basis with full
 * re-orthogonalisation (twice); `applyRows(q)` is q·M for the t vectors as the rows of q (t×n). The
 * vectors are kept as rows, the basis as one [t, j + 1, n] tensor grown by a slice a step, so that a
 * projection onto each column's own basis is one batched product. One read-back at the end (or every
 * 8 steps from 16 on, with `enough`). Returns, per column, α₀…α_{N−1} and β₀…β_{N−1} (β_j couples steps
 * j and j + 1).
 */
async function lanczosColumns(
  applyRows: (q: tf.Tensor2D) => tf.Tensor2D,
  starts: tf.Tensor2D,
  steps: number,
  enough?: (alpha: number[][], beta: number[][]) => boolean,
): Promise<{ alpha: number[][]; beta: number[][] }> {
  const [n, t] = starts.shape;
  const count = Math.max(1, Math.min(steps, n));
  let q = tf.transpose(starts) as tf.Tensor2D; // [t, n]
  let stacked = tf.expandDims(q, 1) as tf.Tensor3D; // [t, 1, n]
  // per step: the first pass's coefficients on the basis q₀…q_j ([t, j + 1]; the last is α_j = q_jᵀ·M·q_j)
  // and ‖z‖² after re-orthogonalisation (β_j²), kept on the backend until a read
  const coefs: tf.Tensor2D[] = [];
  const squares: tf.Tensor1D[] = [];
  const tiny = tf.scalar(1e-30);
  const read = async (): Promise<[number[][], number[][]]> => {
    const done = coefs.length;
    const both = tf.tidy(() => tf.concat([tf.reshape(tf.concat(coefs, 1), [-1]), tf.reshape(tf.stack(squares), [-1])]));
    const values = (await both.data()) as Float32Array;
    both.dispose();
    // row c of the [t, done·(done + 1)/2] coefficients, then the [done, t] squares
    const width = (done * (done + 1)) / 2;
    const alpha: number[][] = [];
    const beta: number[][] = [];
    for (let c = 0; c < t; c++) {
      alpha.push(Array.from({ length: done }, (_, j) => values[c * width + (j * (j + 1)) / 2 + j] as number));
      beta.push(Array.from({ length: done }, (_, j) => Math.sqrt(values[t * width + j * t + c] as number)));
    }
    return [alpha, beta];
  };
  try {
    for (let j = 0; j < count; j++) {
      const basis = stacked;
      const current = q;
      const next = tf.tidy(() => {
        let z = applyRows(current);
        let first: tf.Tensor | undefined;
        for (let pass = 0; pass < 2; pass++) {
          // each row's coefficients on its own basis, [t, j + 1, 1], then z − basisᵀ·coef
          const coef = tf.matMul(basis, tf.expandDims(z, 2));
          first ??= coef;
          z = tf.sub(z, tf.reshape(tf.matMul(coef, basis, true, false), [t, n])) as tf.Tensor2D;
        }
        const square = tf.sum(tf.square(z), 1) as tf.Tensor1D;
        const q1 = tf.div(z, tf.expandDims(tf.sqrt(tf.maximum(square, tiny)), 1)) as tf.Tensor2D;
        const coef = tf.reshape(first as tf.Tensor, [t, j + 1]) as tf.Tensor2D;
        // the last step's vector joins no basis: its β is all that is read of it
        const grown = j + 1 < count ? (tf.concat([basis, tf.expandDims(q1, 1)], 1) as tf.Tensor3D) : undefined;
        return grown ? { coef, square, q1, grown } : { coef, square, q1 };
      }) as { coef: tf.Tensor2D; square: tf.Tensor1D; q1: tf.Tensor2D; grown?: tf.Tensor3D };
      coefs.push(next.coef);
      squares.push(next.square);
      current.dispose();
      q = next.q1;
      if (next.grown) {
        basis.dispose();
        stacked = next.grown;
      }
      // from 16 steps on, every 8: stop once the caller's bounds are decided (one read-back each)
      if (enough && j + 1 < count && j + 1 >= 16 && (j + 1) % 8 === 0) {
        const found = await read();
        if (enough(...found)) return toObject(found);
      }
    }
    return toObject(await read());
  } finally {
    tf.dispose([stacked, q, tiny, ...coefs, ...squares]);
  }
}

const toObject = ([alpha, beta]: [number[][], number[][]]) => ({ alpha, beta });

/**
 * The Gauss rule of the measure with Lanczos coefficients α, β: nodes ascending, weights (squared
 * first components of T_N's eigenvectors), and whether the Krylov space was invariant (a β_j ≤
 * 1e-6 of the largest coefficient: the measure is then the rule itself, truncated there).
 */
export function gaussRule(alpha: readonly number[], beta: readonly number[]) {
  const scale = Math.max(...alpha.map(Math.abs), ...beta.map(Math.abs), Number.MIN_VALUE);
  let size = alpha.length;
  let invariant = false;
  for (let j = 0; j < alpha.length; j++)
    if (!((beta[j] as number) > 1e-6 * scale)) {
      size = j + 1;
      invariant = true;
      break;
    }
  // eigenvalues ascending; the weight of node ν is the squared first component of its eigenvector
  // (Golub–Welsch: only the first components are followed, O(N²))
  const { values, first } = tridiagonalEigenFirst(alpha.slice(0, size), beta.slice(0, size - 1), 'gaussRule');
  const nodes = Array.from(values);
  const weights = Array.from(first, (x) => x * x);
  return { nodes, weights, invariant };
}

/**
 * The tall case (m > n), where W·Wᵀ's null space hides among W's smallest singular directions: with
 * z_i = Wᵀ·u_i, ⟨u_i, u₀_j⟩ = ⟨z_i, v₀_j⟩ / s₀_j, so c_j² = ‖z_i‖²·ν_j / s₀_j² for ν, the spectral
 * measure of z_i/‖z_i‖ with respect to WᵀW (n×n: V₀ is all of R^n). Lanczos on WᵀW gives ν's Gauss
 * rule; by Chebyshev–Markov–Stieltjes an atom in (x_l, x_{l+1}] weighs at most w_l + w_{l+1} and sits
 * above x_l, one at or below x₁ at most w₁ and sits at or above λ_min(WᵀW). So
 * max_j c_j² ≤ ‖z‖²·max(w₁/γ, max_l (w_l + w_{l+1})/x_l) for any γ ≤ λ_min(WᵀW). Returns, per
 * column, the bound without the bottom term and the γ the bottom term needs to stay below `target`
 * (a cosine²); the caller certifies that γ with a Cholesky factorisation of WᵀW − γ·I.
 */
export async function tallCosineBounds(
  w: tf.Tensor2D,
  starts: tf.Tensor2D,
  steps: number,
  target: number,
): Promise<{ upper: Float64Array; floorNeeded: Float64Array; smallestNode: number; largestNode: number }> {
  const t = starts.shape[1];
  const wT = tf.transpose(w) as tf.Tensor2D;
  const z = tf.matMul(wT, starts) as tf.Tensor2D;
  try {
    const norms = tf.norm(z, 'euclidean', 0);
    const zUnit = tf.tidy(() => tf.div(z, tf.maximum(norms, 1e-30))) as tf.Tensor2D;
    const zn = Float64Array.from(await norms.data());
    norms.dispose();
    let lanczos: { alpha: number[][]; beta: number[][] };
    try {
      lanczos = await lanczosColumns((q) => tf.matMul(tf.matMul(q, wT), w) as tf.Tensor2D, zUnit, steps);
    } finally {
      zUnit.dispose();
    }
    const upper = new Float64Array(t);
    const floorNeeded = new Float64Array(t);
    let smallestNode = Number.POSITIVE_INFINITY;
    let largestNode = 0;
    for (let c = 0; c < t; c++) {
      const z2 = (zn[c] as number) ** 2;
      const { nodes, weights, invariant } = gaussRule(lanczos.alpha[c] as number[], lanczos.beta[c] as number[]);
      smallestNode = Math.min(smallestNode, nodes[0] as number);
      largestNode = Math.max(largestNode, nodes[nodes.length - 1] as number);
      let worst = 0;
      if (invariant)
        nodes.forEach((x, l) => {
          worst = Math.max(worst, x > 0 ? ((weights[l] as number) * z2) / x : Number.POSITIVE_INFINITY);
        });
      else
        for (let l = 0; l + 1 < nodes.length; l++) {
          const x = nodes[l] as number;
          worst = Math.max(
            worst,
            x > 0 ? (((weights[l] as number) + (weights[l + 1] as number)) * z2) / x : Number.POSITIVE_INFINITY,
          );
        }
      upper[c] = worst;
      // an invariant space has no mass below x₁; otherwise w₁·‖z‖²/γ < target needs γ > w₁·‖z‖²/target
      floorNeeded[c] = invariant ? 0 : ((weights[0] as number) * z2) / target;
    }
    return { upper, floorNeeded, smallestNode, largestNode };
  } finally {
    tf.dispose([wT, z]);
  }
}

/**
 * Whether λ_min(WᵀW) ≥ γ: WᵀW on the backend (n×n, float32), then whether WᵀW − (γ + 10⁻³·λ_max)·I
 * is positive definite ({@link positiveDefinite}). The 10⁻³·λ_max margin is far above the float32
 * rounding of the Gram and of the Schur complements (~n·2⁻²⁴·λ_max).
 */
export async function gramFloorHolds(w: tf.Tensor2D, gamma: number, lambdaMax: number): Promise<boolean> {
  // (Wᵀ)·W with Wᵀ formed: a product with a transposed operand is slow on wasm
  const gram = tf.tidy(() => tf.matMul(tf.transpose(w), w)) as tf.Tensor2D;
  try {
    return await positiveDefinite(gram, gamma + 1e-3 * lambdaMax);
  } finally {
    gram.dispose();
  }
}

/**
 * Whether the symmetric A − shift·I (A n×n on the backend) is positive definite, by block Cholesky:
 * [[A₁₁, A₂₁ᵀ], [A₂₁, A₂₂]] is positive definite iff A₁₁ = L·Lᵀ is (a float64 Cholesky factorisation
 * on the host of a `block`² read-back) and the Schur complement A₂₂ − (A₂₁·L⁻ᵀ)·(A₂₁·L⁻ᵀ)ᵀ is
 * (formed on the backend). O(n³/3) on the backend, n/`block` read-backs of `block`², O(n·block²) on
 * the host.
 */
export async function positiveDefinite(a: tf.Tensor2D, shift: number, block = 128): Promise<boolean> {
  const size = a.shape[0];
  // shift·I made on the backend (tf.eye fills n² entries on the host and uploads them; tfjs-wasm's float32 oneHot writes int32 bits, so int32 and a cast)
  let s = tf.tidy(() => {
    const eye =
      size < 2 ? tf.eye(size) : tf.cast(tf.oneHot(tf.range(0, size, 1, 'int32') as tf.Tensor1D, size), 'float32');
    return tf.sub(a, tf.mul(eye, shift));
  }) as tf.Tensor2D;
  try {
    for (;;) {
      const n = s.shape[0];
      const bs = Math.min(block, n);
      const head = tf.slice(s, [0, 0], [bs, bs]);
      const values = await head.data();
      head.dispose();
      let l: Matrix64;
      try {
        l = cholesky(matrix64(bs, bs, Float64Array.from(values)));
      } catch {
        return false;
      }
      if (bs === n) return true;
      // L⁻¹ on the host (L lower triangular) by forward substitution, one column at a time over its
      // lower triangle only (a third of solveTriangular's work with an identity right-hand side);
      // transposed to L⁻ᵀ on the backend
      const inv = new Float64Array(bs * bs);
      for (let c = 0; c < bs; c++)
        for (let i = c; i < bs; i++) {
          let acc = i === c ? 1 : 0;
          for (let k = c; k < i; k++) acc -= (l.data[i * bs + k] as number) * (inv[k * bs + c] as number);
          inv[i * bs + c] = acc / (l.data[i * bs + i] as number);
        }
      const next = tf.tidy(() => {
        const linvT = tf.transpose(tf.tensor2d(Float32Array.from(inv), [bs, bs]));
        const p = tf.matMul(tf.slice(s, [bs, 0], [n - bs, bs]), linvT);
        return tf.sub(tf.slice(s, [bs, bs], [n - bs, n - bs]), tf.matMul(p, tf.transpose(p)));
      }) as tf.Tensor2D;
      s.dispose();
      s = next;
    }
  } finally {
    s.dispose();
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
  const { weights, invariant } = gaussRule(alpha, beta);
  if (invariant || weights.length === 1) return Math.max(...weights);
  let worst = 0;
  for (let l = 0; l + 1 < weights.length; l++)
    worst = Math.max(worst, (weights[l] as number) + (weights[l + 1] as number));
  return worst;
}

/** Lanczos steps for threshold ε: enough that a spread measure's adjacent Gauss weights fall below ε² (about 8/ε², 16 to 48). */
export function certifySteps(epsilon: number): number {
  return Math.min(48, Math.max(16, Math.ceil(8 / (epsilon * epsilon))));
}
