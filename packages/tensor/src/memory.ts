import * as tf from '@tensorflow/tfjs-core';
import { TensorLeakError } from './errors';

/** Counts the distinct live tensors in a value: a tensor, or arrays, plain (or null-prototype) objects and Maps of them. */
export function countTensors(value: unknown, seen = new Set<tf.Tensor>()): number {
  if (value instanceof tf.Tensor) {
    if (!value.isDisposed) seen.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) countTensors(v, seen);
  } else if (value instanceof Map) {
    for (const v of value.values()) countTensors(v, seen);
  } else if (
    value !== null &&
    typeof value === 'object' &&
    [Object.prototype, null].includes(Object.getPrototypeOf(value))
  ) {
    for (const v of Object.values(value)) countTensors(v, seen);
  }
  return seen.size;
}

/**
 * Runs `fn` and checks that the only tensors it left alive are the ones it returned
 * (`tf.memory().numTensors` after = before + tensors in the result). Throws a
 * {@link TensorLeakError} otherwise. Works for sync and async functions.
 *
 * @example
 * ```ts
 * const y = await assertNoLeaks(() => tf.tidy(() => tf.add(a, b))); // passes: y is the result
 * ```
 */
export function assertNoLeaks<T>(fn: () => T, label = 'function'): T {
  const before = tf.memory().numTensors;
  const check = (result: Awaited<T>) => {
    const after = tf.memory().numTensors;
    const returned = countTensors(result);
    if (after !== before + returned)
      throw new TensorLeakError(`${label} (returned ${returned} tensor(s))`, before + returned, after);
    return result;
  };
  const out = fn();
  if (out instanceof Promise) return out.then(check) as T;
  return check(out as Awaited<T>) as T;
}
