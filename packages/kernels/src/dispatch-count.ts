import * as tf from '@tensorflow/tfjs-core';

interface CountingBackend {
  recordAndSubmit?: (...args: unknown[]) => unknown;
}

/**
 * Runs `fn` and returns how many GPU compute dispatches it recorded (webgpu: every program tfjs or
 * this package ran), or, on other backends, how many kernels it ran (from `tf.profile`).
 *
 * @example
 * ```ts
 * const n = await countDispatches(() => trainStep());
 * ```
 */
export async function countDispatches(fn: () => unknown): Promise<number> {
  const backend = tf.backend() as unknown as CountingBackend;
  const record = backend.recordAndSubmit;
  if (tf.getBackend() !== 'webgpu' || typeof record !== 'function') {
    const info = await tf.profile(async () => {
      await fn();
    });
    return info.kernels.length;
  }
  let count = 0;
  backend.recordAndSubmit = function (this: unknown, ...args: unknown[]) {
    count++;
    return record.apply(this, args);
  };
  try {
    await fn();
  } finally {
    backend.recordAndSubmit = record;
  }
  return count;
}
