// @ts-check
import * as tf from '@tensorflow/tfjs-core';

/**
 * Right-padded batch of token-id documents: inputs padded with `<|endoftext|>` (id 0), labels with
 * -100 (ignored by the loss); the causal mask keeps the padding out of every real position.
 * `targets` is how many tokens the loss averages over. The caller disposes `x` and `labels`.
 *
 * @example
 * ```js
 * const b = padBatch([[0, 17, 42, 0], [0, 9, 0]]);
 * const loss = model.forward(b.x, { labels: b.labels }).loss;
 * tf.dispose([b.x, b.labels]);
 * ```
 * @param {number[][]} docs
 */
export function padBatch(docs) {
  const len = Math.max(...docs.map((d) => d.length));
  const ids = docs.map((d) => [...d, ...Array(len - d.length).fill(0)]);
  const labels = docs.map((d) => [...d, ...Array(len - d.length).fill(-100)]);
  return {
    x: tf.tensor2d(ids, [docs.length, len], 'int32'),
    labels: tf.tensor2d(labels, [docs.length, len], 'int32'),
    targets: docs.reduce((n, d) => n + d.length - 1, 0),
  };
}

/**
 * One epoch of shuffled {@link padBatch} batches (Fisher–Yates with `rng`, so a seed fixes the
 * order); each batch's tensors are freed when the next one is asked for.
 *
 * @example
 * ```js
 * const rng = new Generator(0);
 * await train(peft, () => shuffledBatches(docs, 16, rng), { optimizer, loss });
 * ```
 * @param {number[][]} docs
 * @param {number} size
 * @param {{ nextFloat53(): number }} rng
 */
export function* shuffledBatches(docs, size, rng) {
  const order = docs.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng.nextFloat53() * (i + 1));
    [order[i], order[j]] = [/** @type {number} */ (order[j]), /** @type {number} */ (order[i])];
  }
  for (let i = 0; i < order.length; i += size) {
    const b = padBatch(order.slice(i, i + size).map((k) => /** @type {number[]} */ (docs[k])));
    try {
      yield b;
    } finally {
      tf.dispose([b.x, b.labels]);
    }
  }
}
