import * as tf from '@tensorflow/tfjs-core';
import { preferTransposeFlags } from '@lora/kernels';

/** The permutation that swaps the last two axes of a rank-r tensor. */
function swapLast(t: tf.Tensor): tf.Tensor {
  const perm = Array.from({ length: t.rank }, (_, i) => i);
  perm[t.rank - 1] = t.rank - 2;
  perm[t.rank - 2] = t.rank - 1;
  return tf.transpose(t, perm);
}

const matmulWithPlainGrads = tf.customGrad(((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a, b),
    // dA = dY·Bᵀ, dB = Aᵀ·dY, with explicit transposes rather than matMul's flags
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [
      tf.matMul(dy, swapLast(saved[1] as tf.Tensor)),
      tf.matMul(swapLast(saved[0] as tf.Tensor), dy),
    ],
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]);

/**
 * `a·b` (batched over leading axes of equal size) whose gradients are computed without matMul's
 * transpose flags. tfjs's own MatMul gradient uses those flags, and on the wasm backend a product
 * with a transposed operand runs about 13× slower than with the operand transposed beforehand; this
 * keeps training on wasm at the speed of plain products. Same values as `tf.matMul(a, b)`.
 *
 * @example
 * ```ts
 * const scores = matmul(q, tf.transpose(k, [0, 1, 3, 2])); // q·kᵀ
 * ```
 */
export function matmul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (a.rank < 2 || a.rank !== b.rank)
    throw new Error(
      `matmul: operands must have the same rank ≥ 2, got [${a.shape.join(', ')}] and [${b.shape.join(', ')}]`,
    );
  // on webgpu, flags cost nothing and tfjs's gradient computes an operand's only when it is needed
  if (preferTransposeFlags()) return tf.matMul(a, b);
  return (matmulWithPlainGrads as unknown as (x: tf.Tensor, y: tf.Tensor) => tf.Tensor)(a, b);
}

/**
 * `a·bᵀ` over the last two axes (batched over leading axes of equal size), as `a @ b.transpose(-1, -2)`:
 * through matMul's transposeB flag where that is fast (webgpu), an explicit transpose elsewhere.
 *
 * @example
 * ```ts
 * const scores = matmulTransposeB(q, k); // q [B, H, T, d], k [B, H, S, d] → [B, H, T, S]
 * ```
 */
export function matmulTransposeB(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  if (a.rank < 2 || a.rank !== b.rank)
    throw new Error(
      `matmulTransposeB: operands must have the same rank ≥ 2, got [${a.shape.join(', ')}] and [${b.shape.join(', ')}]`,
    );
  if (preferTransposeFlags()) return tf.matMul(a, b, false, true);
  return tf.tidy(() => matmul(a, swapLast(b)));
}

/** Swaps the last two axes (a transpose of the matrices in a batch). */
export function transposeLast(t: tf.Tensor): tf.Tensor {
  return swapLast(t);
}
