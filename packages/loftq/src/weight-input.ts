import * as tf from '@tensorflow/tfjs-core';
import { QuantizationError } from './errors';

/** A weight as the quantizers take it: a tensor, or its float32 values with a shape (read on any backend). */
export type WeightInput = tf.Tensor | { data: ArrayLike<number>; shape: readonly number[] };

/** A weight's values in float32, row-major, with its shape. */
export interface WeightValues {
  data: Float32Array;
  shape: number[];
}

/**
 * Reads a weight synchronously and checks it: a non-empty shape of positive integers matching the data,
 * `rank` dimensions when given, every value finite. `fn` names the caller in errors.
 */
export function readWeight(w: WeightInput, fn: string, rank?: number): WeightValues {
  let data: Float32Array;
  let shape: number[];
  if (w instanceof tf.Tensor) {
    shape = [...w.shape];
    try {
      const values = w.dataSync();
      data = values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
    } catch (e) {
      throw new QuantizationError(
        'weight',
        `${fn}: the weight cannot be read synchronously on the ${tf.getBackend()} backend (${(e as Error).message}); pass its values instead: ${fn}({ data: await w.data(), shape: w.shape })`,
      );
    }
  } else if (w && typeof w === 'object' && 'data' in w && 'shape' in w) {
    shape = [...w.shape];
    data = w.data instanceof Float32Array ? w.data : Float32Array.from(w.data);
  } else {
    throw new QuantizationError('weight', `${fn}: the weight must be a tf.Tensor or { data, shape }, got ${typeof w}`);
  }
  if (shape.some((d) => !Number.isInteger(d) || d <= 0))
    throw new QuantizationError(
      'weight',
      `${fn}: the weight's shape [${shape.join(', ')}] must have positive integer dimensions`,
    );
  if (rank !== undefined && shape.length !== rank)
    throw new QuantizationError(
      'weight',
      `${fn}: the weight must be ${rank}-D ([out, in], as a Linear's), got shape [${shape.join(', ')}] (${shape.length}-D); reshape it, or quantize each matrix on its own`,
    );
  const size = shape.reduce((a, b) => a * b, 1);
  if (size !== data.length)
    throw new QuantizationError(
      'weight',
      `${fn}: the shape [${shape.join(', ')}] holds ${size} values but the data has ${data.length}`,
    );
  for (let i = 0; i < data.length; i++) {
    const v = data[i] as number;
    if (!Number.isFinite(v))
      throw new QuantizationError(
        'weight',
        `${fn}: the weight holds ${v} at flat index ${i}; quantizing needs finite values (a block's absmax would be ${v})`,
      );
  }
  return { data, shape };
}

/** Checks a block size: a positive integer. */
export function checkBlockSize(blockSize: unknown, fn: string): number {
  if (typeof blockSize !== 'number' || !Number.isInteger(blockSize) || blockSize <= 0)
    throw new QuantizationError(
      'blockSize',
      `${fn}: blockSize is ${String(blockSize)}; it must be a positive integer (bitsandbytes and the LoftQ authors use 64)`,
    );
  return blockSize;
}
