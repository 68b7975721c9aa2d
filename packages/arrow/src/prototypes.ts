/**
 * Arrow's expert prototypes: for each task expert on a layer, the top right singular vector of its
 * ΔW = B·A (a unit vector in the layer's input space), which routing compares each token with.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, matrix64, qr, svd } from '@lora/linalg';
import { defaultRng, matmul, transposeLast } from '@lora/nn';
import { Generator } from '@lora/tensor';

/**
 * How prototypes are computed.
 * - `'power-iteration'` (the default): PEFT 0.21's own computation, 15 steps of power iteration on
 *   `v ↦ Aᵀ(BᵀB)(A·v)` in float32 from a normal start vector, drawn with PyTorch's CPU generator
 *   seeded with `rngSeed` (a new generator per expert, so every expert starts from the same vector, as
 *   in PEFT), or from `@lora/nn`'s generator (`manualSeed`, PyTorch's global one) without a seed. With
 *   the same seed it gives PEFT's prototypes to float32 rounding even where 15 steps have not
 *   converged (σ₁ ≈ σ₂), so routing picks PEFT's experts. Runs on the active backend, batched over the
 *   experts, with no read back.
 * - `'exact'`: the exact top right singular vector, in float64 on the CPU from the small factors
 *   (QR of Aᵀ and of B, then the SVD of the r×r core `R_B·R_Aᵀ`); no start vector, no seed. It
 *   differs from PEFT's where PEFT's iteration has not converged. The factors are read back, so on
 *   webgpu they are built by `await buildArrowPrototypes(model)` (which `createArrowModel` runs).
 */
export type PrototypeMethod = 'power-iteration' | 'exact';

/** PEFT's `top_right_singular_vec_from_BA(iters=15, eps=1e-8)`. */
const POWER_STEPS = 15;
const EPS = 1e-8;

/**
 * The start vector of PEFT's power iteration for one expert: `torch.randn(in, generator=g)` with a
 * fresh `g` seeded `seed` (so the same for every expert), or a draw from the global generator.
 */
function startVector(inFeatures: number, seed: number | null): Float32Array {
  const g = seed === null ? defaultRng() : new Generator(seed);
  return g.fillNormal(new Float32Array(inFeatures));
}

/**
 * PEFT's prototypes for experts with factors `a[e]` ([r, in]) and `b[e]` ([out, r]): `[E, in]` float32,
 * computed as PEFT computes them (see {@link PrototypeMethod}). The caller owns the result.
 */
export function powerIterationPrototypes(a: tf.Tensor[], b: tf.Tensor[], seed: number | null): tf.Tensor2D {
  const inFeatures = a[0]?.shape[1] as number;
  // each expert draws its own start vector, in PEFT's order (only a seedless run draws different ones)
  const starts = new Float32Array(a.length * inFeatures);
  for (let e = 0; e < a.length; e++) starts.set(startVector(inFeatures, seed), e * inFeatures);
  return tf.tidy(() => {
    const A = tf.stack(a) as tf.Tensor3D; // [E, r, in]
    const B = tf.stack(b) as tf.Tensor3D; // [E, out, r]
    const At = transposeLast(A); // [E, in, r]
    const C = matmul(transposeLast(B), B); // BᵀB: [E, r, r]
    const unit = (v: tf.Tensor3D) => tf.div(v, tf.add(tf.norm(v, 'euclidean', 1, true), EPS)) as tf.Tensor3D;
    let v = unit(tf.tensor3d(starts, [a.length, inFeatures, 1]));
    for (let i = 0; i < POWER_STEPS; i++) {
      // w = Aᵀ (BᵀB) (A v): ΔWᵀΔW·v without forming ΔW
      const w = matmul(At, matmul(C, matmul(A, v))) as tf.Tensor3D;
      v = unit(w);
    }
    return tf.reshape(v, [a.length, inFeatures]) as tf.Tensor2D;
  });
}

/** Aᵀ as an in×r Matrix64 from A's row-major [r, in] values. */
function transposed(values: ArrayLike<number>, rows: number, cols: number): Matrix64 {
  const m = matrix64(cols, rows);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) m.data[j * rows + i] = values[i * cols + j] as number;
  return m;
}

/**
 * The exact top right singular vector of B·A, in float64, from A's values ([r, in], row-major) and
 * B's ([out, r]): Aᵀ = Q_A·R_A, B = Q_B·R_B, so B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ and the vector is Q_A times
 * the top right singular vector of the r×r core. Its sign is chosen so that its largest entry is
 * positive (routing takes |x·p|, so the sign never matters). A zero expert (B = 0) gives a zero vector,
 * as PEFT's iteration does.
 */
export function exactPrototype(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  r: number,
  inF: number,
  outF: number,
): Float64Array {
  const out = new Float64Array(inF);
  const qa = qr(transposed(a, r, inF)); // Q: in×k, R: k×r, k = min(in, r)
  const qb = qr(matrix64(outF, r, b)); // Q: out×k', R: k'×r
  const ka = qa.R.rows;
  const kb = qb.R.rows;
  // core = R_B · R_Aᵀ: [k', k]
  const core = matrix64(kb, ka);
  for (let i = 0; i < kb; i++)
    for (let j = 0; j < ka; j++) {
      let s = 0;
      for (let l = 0; l < r; l++) s += (qb.R.data[i * r + l] as number) * (qa.R.data[j * r + l] as number);
      core.data[i * ka + j] = s;
    }
  const { S, Vh } = svd(core);
  if (!((S[0] ?? 0) > 0)) return out;
  // v = Q_A · Vh[0]ᵀ
  let big = 0;
  for (let f = 0; f < inF; f++) {
    let s = 0;
    for (let j = 0; j < ka; j++) s += (qa.Q.data[f * ka + j] as number) * (Vh.data[j] as number);
    out[f] = s;
    if (Math.abs(s) > Math.abs(big)) big = s;
  }
  if (big < 0) for (let f = 0; f < inF; f++) out[f] = -(out[f] as number);
  return out;
}

/** {@link exactPrototype} for every expert, from their factors' values: `[E, in]` float32 (the caller owns it). */
export function exactPrototypes(
  factors: { a: ArrayLike<number>; b: ArrayLike<number> }[],
  r: number,
  inF: number,
  outF: number,
): tf.Tensor2D {
  const data = new Float32Array(factors.length * inF);
  for (const [e, { a, b }] of factors.entries()) data.set(exactPrototype(a, b, r, inF, outF), e * inF);
  return tf.tensor2d(data, [factors.length, inF]);
}
