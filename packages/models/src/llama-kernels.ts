import type * as tf from '@tensorflow/tfjs-core';
import { type AttentionOptions, linearCrossEntropy, rmsNorm, rope, scaledDotProductAttention, swiglu } from '@lora/nn';

/**
 * The ops a Llama forward (and backward) pass spends its time in, apart from the projections
 * (Linear layers, which LoRA wraps). The model calls them only through {@link llamaKernels}, so a
 * backend-specific implementation (a WebGPU kernel, say) replaces one op by assigning it; each must
 * keep the signature, the result and the gradient of the default.
 */
export interface LlamaKernels {
  /** `x / √(mean(x²) + eps) · weight` over the last axis (`LlamaRMSNorm`). */
  rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor;
  /** `x·cos + rotate_half(x)·sin` for x [B, heads, T, headDim], tables [T, headDim]. */
  rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor;
  /** Softmax attention over q [B, H, T, D] and grouped k, v [B, Hkv, S, D]; returns [B, H, T, D]. */
  attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: AttentionOptions): tf.Tensor;
  /** `silu(gate) · up`. */
  swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor;
  /**
   * Mean cross-entropy of `h·Wᵀ` against targets (−100 ignored), without the [N, vocab] logits;
   * `vocabBlocks` (wasm, frozen W): W's transposed vocabulary blocks, which the model keeps.
   */
  lmHeadLoss(h: tf.Tensor, weight: tf.Tensor, targets: tf.Tensor, options?: { vocabBlocks?: tf.Tensor[] }): tf.Scalar;
}

/**
 * The kernels {@link LlamaForCausalLM} runs, defaulting to `@lora/nn`'s fused ops with their own
 * gradients (memory-lean attention in query blocks, fused RMSNorm / RoPE / SwiGLU, a chunked
 * LM-head cross-entropy).
 *
 * @example
 * ```ts
 * import { llamaKernels } from '@lora/models';
 * const cpuAttention = llamaKernels.attention;
 * llamaKernels.attention = (q, k, v, o) => myGpuAttention(q, k, v, o) ?? cpuAttention(q, k, v, o);
 * ```
 */
export const llamaKernels: LlamaKernels = {
  rmsNorm,
  rope,
  attention: scaledDotProductAttention,
  swiglu,
  lmHeadLoss: (h, weight, targets, options) => linearCrossEntropy(h, weight, targets, options),
};
