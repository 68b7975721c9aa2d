import * as tf from '@tensorflow/tfjs-core';
import { numberToF16Bits, f16BitsToNumber } from '@lora/tensor';
import { QuantizationError } from './errors';
import { type WeightInput, readWeight } from './weight-input';

/** A weight in bitsandbytes' vectorwise int8 format (what {@link int8Quantize} returns). */
export interface Int8Quantized {
  readonly format: 'int8';
  /** The codes, −127…127, row-major (bitsandbytes' `CB`). */
  values: Int8Array;
  /** max|x| of each row (bitsandbytes' `SCB`), float32. */
  absmax: Float32Array;
  shape: [number, number];
  /** Whether the weight was rounded to float16 before quantizing, as bitsandbytes' `Int8Params` does. */
  float16Input: boolean;
}

/** 1/127 as bitsandbytes' `int8_vectorwise_dequant` writes it, in float32. */
const INV_127 = Math.fround(7.874015718698502e-3);

/** Round half to even (torch.round, CUDA's __float2int_rn) of an exact float. */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Quantizes a 2-D weight to bitsandbytes' vectorwise int8 (`int8_vectorwise_quant` with threshold 0,
 * what `Int8Params` and PEFT's `loftq_bits=8` use): per row `absmax = max|x|` (float32) and
 * `q = round(x · (127 / absmax))`, rounding half to even, so codes run −127…127. A zero row gets codes
 * 0. `float16Input` rounds the weight to float16 first, as `Int8Params` does before its CUDA kernel
 * (PEFT's LoftQ at 8 bits goes through it); the default quantizes the float32 values as given.
 *
 * The weight is read synchronously: on webgpu pass `{ data: await w.data(), shape: w.shape }`.
 *
 * @example
 * ```ts
 * const q = int8Quantize(weight);             // { format: 'int8', values: Int8Array, absmax, shape }
 * const back = int8Dequantize(q);             // q · absmax / 127
 * ```
 */
export function int8Quantize(w: WeightInput, options: { float16Input?: boolean } = {}): Int8Quantized {
  const { data, shape } = readWeight(w, 'int8Quantize', 2);
  const [rows, cols] = shape as [number, number];
  const float16Input = options.float16Input ?? false;
  const x = float16Input ? data.map((v) => f16BitsToNumber(numberToF16Bits(v))) : data;
  const values = new Int8Array(rows * cols);
  const absmax = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let m = 0;
    for (let c = 0; c < cols; c++) m = Math.max(m, Math.abs(x[o + c] as number));
    absmax[r] = m;
    if (m === 0) continue; // 127/0 would make 0·∞ = NaN: a zero row stays zero
    const scale = Math.fround(127 / m);
    for (let c = 0; c < cols; c++) values[o + c] = roundHalfEven(Math.fround((x[o + c] as number) * scale));
  }
  return { format: 'int8', values, absmax, shape: [rows, cols], float16Input };
}

/** int8 values in float32: `q · absmax · (1/127)`, in that order, as `int8_vectorwise_dequant`. */
export function int8DequantizeValues(q: Int8Quantized): Float32Array {
  if (q?.format !== 'int8')
    throw new QuantizationError('q', `int8Dequantize: expected int8Quantize's output ({ format: 'int8', … })`);
  const [rows, cols] = q.shape;
  if (q.values.length !== rows * cols || q.absmax.length !== rows)
    throw new QuantizationError(
      'q',
      `int8Dequantize: shape [${rows}, ${cols}] needs ${rows * cols} codes and ${rows} absmax values, got ${q.values.length} and ${q.absmax.length}`,
    );
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const s = q.absmax[r] as number;
    for (let c = 0; c < cols; c++) out[r * cols + c] = Math.fround((q.values[r * cols + c] as number) * s) * INV_127;
  }
  return out;
}

/**
 * The weight back from vectorwise int8 (bitsandbytes' `int8_vectorwise_dequant`): `q · absmax · (1/127)`
 * in float32. The caller owns the tensor.
 *
 * @example
 * ```ts
 * const w2 = int8Dequantize(int8Quantize(w));   // within absmax/254 of w in every row
 * ```
 */
export function int8Dequantize(q: Int8Quantized): tf.Tensor2D {
  return tf.tensor2d(int8DequantizeValues(q), q.shape, 'float32');
}
