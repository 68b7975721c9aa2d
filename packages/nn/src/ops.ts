import * as tf from '@tensorflow/tfjs-core';
import { preferTransposeFlags } from '@lora/kernels';

/** The permutation that swaps the last two axes of a rank-r tensor. */
function swapLast(t: tf.Tensor): tf.Tensor {
  const perm = Array.from({ length: t.rank }, (_, i) => i);
  perm[t.rank - 1] = t.rank - 2;
  perm[t.rank - 2] = t.rank - 1;
  return tf.transpose(t, perm);
}

/**
 * On wasm a product with a transposed operand leaves XNNPACK for a scalar loop (about 13× slower),
 * so there an operand is transposed first; TensorFlow (and the other backends) take the flags at
 * full speed and would only pay for the copy.
 */
function transposeFirst(): boolean {
  return tf.getBackend() === 'wasm';
}

/** `a·bᵀ` for 2-d `a` [m, k] and `b` [n, k], in the layout the active backend multiplies fastest. */
export function matmulNT(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return transposeFirst() ? tf.tidy(() => tf.matMul(a, tf.transpose(b))) : tf.matMul(a, b, false, true);
}

/** `aᵀ·b` for 2-d `a` [k, m] and `b` [k, n], in the layout the active backend multiplies fastest. */
export function matmulTN(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  return transposeFirst() ? tf.tidy(() => tf.matMul(tf.transpose(a), b)) : tf.matMul(a, b, true, false);
}

/**
 * True unless `t` is a frozen parameter (a variable whose `trainable` is off). A gradient computation
 * never asks for the gradient of a frozen parameter, so ops can skip computing it.
 */
export function needsGrad(t: tf.Tensor): boolean {
  return !(t instanceof tf.Variable) || t.trainable;
}

type Grad2 = (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;
type Grad1 = (a: tf.Tensor) => tf.Tensor;

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
}) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as Grad2;

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
  return matmulWithPlainGrads(a, b);
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

/** The products of a projection for one weight layout: y = x·op(W), dX, and dW. */
interface Layout {
  forward(x: tf.Tensor, w: tf.Tensor): tf.Tensor;
  dx(dy: tf.Tensor, w: tf.Tensor): tf.Tensor;
  dw(dy: tf.Tensor, x: tf.Tensor): tf.Tensor;
}

/** W [out, in] (PyTorch's Linear): y = x·Wᵀ, dX = dY·W, dW = dYᵀ·x. */
const OUT_IN: Layout = { forward: matmulNT, dx: (dy, w) => tf.matMul(dy, w), dw: matmulTN };
/** W [in, out] (transformers' Conv1D): y = x·W, dX = dY·Wᵀ, dW = xᵀ·dY. */
const IN_OUT: Layout = { forward: (x, w) => tf.matMul(x, w), dx: matmulNT, dw: (dy, x) => matmulTN(x, dy) };

function projection(x: tf.Tensor, w: tf.Tensor, layout: Layout): tf.Tensor {
  if (!needsGrad(w)) {
    // only x is an input of the op: nothing is kept, and the weight's gradient is never made
    const frozen = tf.customGrad(((xi: tf.Tensor) => ({
      value: layout.forward(xi, w),
      gradFunc: (dy: tf.Tensor) => layout.dx(dy, w),
    })) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as Grad1;
    return frozen(x);
  }
  const both = tf.customGrad(((xi: tf.Tensor, wi: tf.Tensor, save: tf.GradSaveFunc) => {
    save([xi, wi]);
    return {
      value: layout.forward(xi, wi),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => [
        layout.dx(dy, saved[1] as tf.Tensor),
        layout.dw(dy, saved[0] as tf.Tensor),
      ],
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as Grad2;
  return both(x, w);
}

/**
 * `x·Wᵀ` for 2-d `x` [n, in] and `w` [out, in] (PyTorch's weight layout), with a gradient for `w`
 * only when it can be asked for: a frozen weight (a non-trainable variable, as LoRA's base weights)
 * gets none, and nothing of `x` is kept for it. On wasm dX = dY·W multiplies by the weight as
 * stored, so XNNPACK packs it once and keeps the packing for every later step.
 */
export function linearProduct(x: tf.Tensor, w: tf.Tensor): tf.Tensor {
  return projection(x, w, OUT_IN);
}

/**
 * `x·W` for 2-d `x` [n, in] and `w` [in, out] (transformers' Conv1D layout), with a gradient for `w`
 * only when it can be asked for (see {@link linearProduct}).
 */
export function affineProduct(x: tf.Tensor, w: tf.Tensor): tf.Tensor {
  return projection(x, w, IN_OUT);
}
