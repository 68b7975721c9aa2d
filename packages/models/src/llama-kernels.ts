import * as tf from '@tensorflow/tfjs-core';
import * as kernels from '@lora/kernels';
import {
  type AttentionOptions,
  gpuKernelsActive,
  linearCrossEntropy,
  matmul,
  matmulTransposeB,
  rmsNorm,
  rope,
  scaledDotProductAttention,
  swiglu,
} from '@lora/nn';

/** What {@link LlamaKernels.attention} is given: `@lora/nn`'s options, and on webgpu the model's mask. */
export interface LlamaAttentionOptions extends AttentionOptions {
  /**
   * webgpu only: the additive mask [B or 1, 1, rep·T, S] (rep query heads per kv head; 0 where a
   * query may attend, the float32 minimum elsewhere), built once per forward pass for all layers.
   */
  groupedMask?: tf.Tensor;
}

/**
 * The ops a Llama forward (and backward) pass spends its time in, apart from the projections
 * (Linear layers, which LoRA wraps). The model calls them only through {@link llamaKernels}, so a
 * backend-specific implementation replaces one op by assigning it; each must keep the signature,
 * the result and the gradient of the default.
 */
export interface LlamaKernels {
  /** `x / √(mean(x²) + eps) · weight` over the last axis (`LlamaRMSNorm`). */
  rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor;
  /**
   * A projection y [B, T, heads·D] as heads [B, heads, T, D], rotated by RoPE (`x·cos +
   * rotate_half(x)·sin`, tables [T, D]) unless `cos` and `sin` are null (the values).
   */
  ropeHeads(y: tf.Tensor, cos: tf.Tensor | null, sin: tf.Tensor | null, heads: number): tf.Tensor;
  /** Softmax attention over q [B, H, T, D] and grouped k, v [B, Hkv, S, D]; returns [B, H, T, D]. */
  attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: LlamaAttentionOptions): tf.Tensor;
  /** `silu(gate) · up`. */
  swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor;
  /**
   * Mean cross-entropy of `h·Wᵀ` against targets (−100 ignored), without the [N, vocab] logits;
   * `vocabBlocks` (wasm, frozen W): W's transposed vocabulary blocks, which the model keeps.
   */
  lmHeadLoss(h: tf.Tensor, weight: tf.Tensor, targets: tf.Tensor, options?: { vocabBlocks?: tf.Tensor[] }): tf.Scalar;
}

/** The heads of y [B, T, n·D] as [B, n, T, D], rotated unless the tables are null. */
function ropeHeads(y: tf.Tensor, cos: tf.Tensor | null, sin: tf.Tensor | null, heads: number): tf.Tensor {
  if (gpuKernelsActive()) return kernels.ropeHeads(y, cos, sin, heads);
  const [b, t, width] = y.shape as [number, number, number];
  const h = tf.transpose(tf.reshape(y, [b, t, heads, width / heads]), [0, 2, 1, 3]);
  return cos && sin ? rope(h, cos, sin) : h;
}

/**
 * On webgpu (with the model's grouped mask): `@lora/kernels`' masked softmax over q·kᵀ, the rep
 * query heads that share a kv head stacked along the query axis ([B, Hkv, rep·T, D]), as the GPU
 * benchmark measures it. Elsewhere `@lora/nn`'s attention in query blocks with its own gradient.
 */
function attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: LlamaAttentionOptions): tf.Tensor {
  const { groupedMask, ...rest } = options;
  if (!groupedMask || !gpuKernelsActive()) return scaledDotProductAttention(q, k, v, rest);
  const [b, h, t, d] = q.shape as [number, number, number, number];
  const hkv = k.shape[1] as number;
  const qg = tf.reshape(q, [b, hkv, (h / hkv) * t, d]);
  const probs = kernels.maskedSoftmax(matmulTransposeB(qg, k), groupedMask, options.scale ?? 1 / Math.sqrt(d));
  return tf.reshape(matmul(probs, v), [b, h, t, d]);
}

/**
 * The kernels {@link LlamaForCausalLM} runs. Each default picks by backend (`gpuKernelsActive`):
 * on webgpu `@lora/kernels`' fused WGSL kernels (RMSNorm, RoPE with the head layout, masked
 * softmax, SwiGLU); on wasm, cpu and tensorflow `@lora/nn`'s lean ops with their own gradients
 * (attention in query blocks, fused RMSNorm / RoPE / SwiGLU, a chunked LM-head cross-entropy).
 *
 * @example
 * ```ts
 * import { llamaKernels } from '@lora/models';
 * const cpuAttention = llamaKernels.attention;
 * llamaKernels.attention = (q, k, v, o) => myAttention(q, k, v, o) ?? cpuAttention(q, k, v, o);
 * ```
 */
export const llamaKernels: LlamaKernels = {
  rmsNorm,
  ropeHeads,
  attention,
  swiglu,
  lmHeadLoss: (h, weight, targets, options) => linearCrossEntropy(h, weight, targets, options),
};
