import type * as tf from '@tensorflow/tfjs-core';
import { softmaxCrossEntropy } from '@lora/kernels';

/**
 * Cross-entropy from logits `[N, C]` (or `[..., C]`) and integer targets `[N]` (or `[...]`), as
 * `torch.nn.functional.cross_entropy`: targets equal to `ignoreIndex` (default −100, Hugging Face's
 * label padding) count for nothing, and `'mean'` divides by the number of targets that count.
 * Computed with a stable log-softmax.
 *
 * @example
 * ```ts
 * const loss = crossEntropy(logits, labels); // scalar
 * ```
 */
export function crossEntropy(
  logits: tf.Tensor,
  targets: tf.Tensor,
  options: { ignoreIndex?: number; reduction?: 'mean' | 'sum' | 'none' } = {},
): tf.Tensor {
  // @lora/kernels: fused on webgpu ('mean'), the same composite of tf ops elsewhere (it checks the inputs)
  return softmaxCrossEntropy(logits, targets, options);
}
