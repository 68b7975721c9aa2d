import * as tf from '@tensorflow/tfjs-core';

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
  const ignore = options.ignoreIndex ?? -100;
  const reduction = options.reduction ?? 'mean';
  const c = logits.shape.at(-1) as number;
  if (targets.dtype !== 'int32') throw new Error(`crossEntropy: targets must be int32, got ${targets.dtype}`);
  if (logits.shape.slice(0, -1).join(',') !== targets.shape.join(',')) {
    throw new Error(
      `crossEntropy: logits [${logits.shape.join(', ')}] and targets [${targets.shape.join(', ')}] must agree on every dimension but the last`,
    );
  }
  return tf.tidy(() => {
    const flat = tf.reshape(logits, [-1, c]);
    const t = tf.reshape(targets, [-1]);
    const valid = tf.notEqual(t, ignore);
    const safe = tf.where(valid, t, tf.zerosLike(t));
    const logp = tf.logSoftmax(flat);
    const picked = tf.sum(tf.mul(logp, tf.oneHot(safe, c)), -1);
    const losses = tf.mul(tf.neg(picked), tf.cast(valid, 'float32'));
    if (reduction === 'none') return tf.reshape(losses, targets.shape);
    const total = tf.sum(losses);
    // torch divides by the count of targets that count (NaN when there are none, as torch gives)
    return reduction === 'sum' ? total : tf.div(total, tf.sum(tf.cast(valid, 'float32')));
  });
}
