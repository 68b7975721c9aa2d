import * as tf from '@tensorflow/tfjs-core';
import { Module } from '@lora/nn';

/**
 * DoRA's magnitude vector, held as `lora_magnitude_vector.<adapter>.weight` as in PEFT (saved as
 * `…lora_magnitude_vector`). Its shape is PEFT's: `[out]` for Linear, `[dim]` for Embedding,
 * `[1, out, 1(, 1)]` for Conv1d / Conv2d.
 */
export class Magnitude extends Module {
  weight: tf.Variable;
  constructor(value: tf.Tensor) {
    super();
    this.weight = this.registerParameter('weight', value);
  }
  forward(): never {
    throw new Error('a magnitude vector is a parameter holder');
  }
}

/** The value of x with no gradient flowing back through it (torch's `.detach()`). */
export const detach = tf.customGrad(((x: tf.Tensor) => ({
  value: tf.clone(x),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
})) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/**
 * The L2 norm of `t` over every axis but `keep`, with those axes kept as size 1 (so that it scales
 * `t` by broadcasting): DoRA's weight norm. `keep` 0 gives a norm per output row or output channel
 * (Linear, convolutions); 1 gives one per embedding dimension, taken over the vocabulary (Embedding).
 */
export function normExcept(t: tf.Tensor, keep: number): tf.Tensor {
  return tf.tidy(() => {
    const axes = t.shape.map((_, i) => i).filter((i) => i !== keep);
    return tf.sqrt(tf.sum(tf.square(t), axes, true));
  });
}
