import * as tf from '@tensorflow/tfjs-core';

/**
 * Whether every value of every tensor is finite (PEFT's safe-merge check), read from the backend
 * asynchronously so that it works on every backend, webgpu in Node included.
 */
export async function allFinite(tensors: tf.Tensor[]): Promise<boolean> {
  const finite = tf.tidy(() => tf.all(tf.stack(tensors.map((t) => tf.all(tf.isFinite(t))))));
  try {
    return Boolean((await finite.data())[0]);
  } finally {
    finite.dispose();
  }
}
