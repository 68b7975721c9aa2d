import * as tf from '@tensorflow/tfjs-core';
import { NF4_CODE, blockValues, nf4Code } from './codebooks';
import { QuantizationError } from './errors';
import { type WeightInput, checkBlockSize, readWeight } from './weight-input';

/** A weight in bitsandbytes' NF4 format (what {@link nf4Quantize} returns). */
export interface Nf4Quantized {
  readonly format: 'nf4';
  /** Two 4-bit codes a byte, the first in the high nibble (an odd count ends with the code of 0). */
  packed: Uint8Array;
  /** max|x| of each block (float32); the last block may be shorter. */
  absmax: Float32Array;
  shape: number[];
  blockSize: number;
}

/**
 * Quantizes a weight to bitsandbytes' NF4 (`Params4bit(w, quant_type='nf4', compress_statistics=False)`,
 * the kernel PEFT's LoftQ runs): the weight flattened row-major in blocks of `blockSize` (the last one
 * may be shorter), `absmax` = max|x| of each block in float32, each value scaled by the float32
 * reciprocal of its block's absmax and given the code of the nearest of the 16 NF4 values by the
 * kernel's rule (the thresholds are the midpoints; a value exactly on one takes the lower code; an
 * all-zero block gets code 0 and dequantizes to 0), two codes a byte with the first in the high nibble.
 * No double quantization of the absmax. (bitsandbytes' CUDA build uses the approximate fast-math
 * reciprocal; this is the IEEE one, which can differ for a value within an ulp of a threshold.)
 *
 * The weight is read synchronously: on webgpu pass `{ data: await w.data(), shape: w.shape }`.
 *
 * @example
 * ```ts
 * const q = nf4Quantize(weight);            // { format: 'nf4', packed, absmax, shape, blockSize: 64 }
 * const back = nf4Dequantize(q);            // a tensor of weight's shape
 * ```
 */
export function nf4Quantize(w: WeightInput, options: { blockSize?: number } = {}): Nf4Quantized {
  const blockSize = checkBlockSize(options.blockSize ?? 64, 'nf4Quantize');
  const { data, shape } = readWeight(w, 'nf4Quantize');
  const n = data.length;
  const blocks = Math.ceil(n / blockSize);
  const absmax = new Float32Array(blocks);
  const packed = new Uint8Array(Math.ceil(n / 2));
  for (let b = 0; b < blocks; b++) {
    const start = b * blockSize;
    const end = Math.min(n, start + blockSize);
    let m = 0;
    for (let i = start; i < end; i++) {
      const a = Math.abs(data[i] as number);
      if (a > m) m = a;
    }
    absmax[b] = m;
    const inv = Math.fround(1 / m); // Infinity for an all-zero block: 0·∞ is NaN, which takes code 0
    for (let i = start; i < end; i++) {
      const code = nf4Code(Math.fround((data[i] as number) * inv));
      packed[i >> 1] = (packed[i >> 1] as number) | (i & 1 ? code : code << 4);
    }
    // an odd count: the kernel pads with 0 and quantizes it with the last block's scale
    if (end === n && n & 1) packed[n >> 1] = (packed[n >> 1] as number) | nf4Code(Math.fround(0 * inv));
  }
  return { format: 'nf4', packed, absmax, shape, blockSize };
}

/** The NF4 codes of {@link nf4Quantize}'s output, one a byte, in the weight's row-major order. */
export function nf4Codes(q: Nf4Quantized): Uint8Array {
  const n = checkQuantized(q, 'nf4Codes');
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const byte = q.packed[i >> 1] as number;
    codes[i] = i & 1 ? byte & 0x0f : byte >> 4;
  }
  return codes;
}

/** NF4 values in float32: `NF4[code] · absmax` of each value's block, as bitsandbytes' `dequantize_4bit`. */
export function nf4DequantizeValues(q: Nf4Quantized): Float32Array {
  return blockValues(nf4Codes(q), NF4_CODE, q.absmax, q.blockSize);
}

/**
 * The weight back from bitsandbytes' NF4 (`dequantize_4bit`): `NF4[code] · absmax` of each value's
 * block, in float32, as a tensor of the original shape. The caller owns it.
 *
 * @example
 * ```ts
 * const w2 = nf4Dequantize(nf4Quantize(w));   // within an NF4 step of w in every block
 * ```
 */
export function nf4Dequantize(q: Nf4Quantized): tf.Tensor {
  return tf.tensor(nf4DequantizeValues(q), q.shape, 'float32');
}

function checkQuantized(q: Nf4Quantized, fn: string): number {
  if (q?.format !== 'nf4')
    throw new QuantizationError('q', `${fn}: expected nf4Quantize's output ({ format: 'nf4', … })`);
  const n = q.shape.reduce((a, b) => a * b, 1);
  checkBlockSize(q.blockSize, fn);
  if (q.packed.length !== Math.ceil(n / 2) || q.absmax.length !== Math.ceil(n / q.blockSize))
    throw new QuantizationError(
      'q',
      `${fn}: shape [${q.shape.join(', ')}] with blockSize ${q.blockSize} needs ${Math.ceil(n / 2)} packed bytes and ${Math.ceil(n / q.blockSize)} absmax values, got ${q.packed.length} and ${q.absmax.length}`,
    );
  return n;
}
