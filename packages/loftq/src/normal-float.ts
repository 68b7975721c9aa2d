import * as tf from '@tensorflow/tfjs-core';
import { blockValues, normalFloatCodebook } from './codebooks';
import { QuantizationError } from './errors';
import { type WeightInput, checkBlockSize, readWeight } from './weight-input';

/** A weight in the LoftQ authors' normal-float format (what {@link nfQuantize} returns). */
export interface NfQuantized {
  readonly format: 'nf';
  bits: 2 | 3 | 4;
  /** `⌊8 / bits⌋` codes a byte, the first in the least significant bits (the reference's packing). */
  packed: Uint8Array;
  /** max|x| of each block, float32. */
  absmax: Float32Array;
  shape: number[];
  blockSize: number;
}

/** Checks `bits` of a normal-float quantizer. */
export function checkNfBits(bits: unknown, fn: string): 2 | 3 | 4 {
  if (bits !== 2 && bits !== 3 && bits !== 4)
    throw new QuantizationError(
      'bits',
      `${fn}: bits is ${String(bits)}; the normal-float quantizer has 2, 3 or 4 bits (8 bits is int8Quantize)`,
    );
  return bits;
}

/**
 * Quantizes a weight with the LoftQ authors' `NFQuantizer` (`method="normal"`; PEFT ≤ 0.19 used it
 * when bitsandbytes was missing): the weight flattened row-major in blocks of `blockSize` (which must
 * divide the number of values, as the reference requires), each block divided by its max|x| (float32)
 * and given the index of the nearest value of {@link normalFloatCodebook}(bits) (the first on a tie),
 * `⌊8 / bits⌋` codes a byte, least significant first. At 3 bits that is two codes a byte (the reference
 * sizes its buffer for 3/8 of a byte a code there and fails; the codes are the same).
 *
 * How `bits: 4` differs from bitsandbytes' NF4 ({@link nf4Quantize}): the same 16 values, but the block
 * is divided by its max (NF4 multiplies by the float32 reciprocal), the nearest value is found by
 * comparing float32 distances (NF4 compares with fixed midpoint thresholds, a tie going down), codes are
 * packed low bits first (NF4: the first code in the high nibble), and the block size must divide the
 * weight (NF4 allows a shorter last block). Codes agree except for values within an ulp or two of a
 * midpoint.
 *
 * The weight is read synchronously: on webgpu pass `{ data: await w.data(), shape: w.shape }`.
 *
 * @example
 * ```ts
 * const q2 = nfQuantize(weight, { bits: 2 });  // 2-bit codes over [-1, 0, 0.338, 1] × block max
 * const back = nfDequantize(q2);
 * ```
 */
export function nfQuantize(w: WeightInput, options: { bits: 2 | 3 | 4; blockSize?: number }): NfQuantized {
  const bits = checkNfBits(options?.bits, 'nfQuantize');
  const blockSize = checkBlockSize(options.blockSize ?? 64, 'nfQuantize');
  const { data, shape } = readWeight(w, 'nfQuantize');
  const n = data.length;
  if (n % blockSize !== 0)
    throw new QuantizationError(
      'blockSize',
      `nfQuantize: blockSize ${blockSize} does not divide the weight's ${n} values (shape [${shape.join(', ')}]), as the normal-float quantizer requires; use a block size that divides ${n}, or nf4Quantize (4 bits), which allows a shorter last block`,
    );
  const book = normalFloatCodebook(bits);
  const per = Math.floor(8 / bits);
  const packed = new Uint8Array(Math.ceil(n / per));
  const absmax = new Float32Array(n / blockSize);
  for (let b = 0; b < absmax.length; b++) {
    let m = 0;
    for (let i = b * blockSize; i < (b + 1) * blockSize; i++) m = Math.max(m, Math.abs(data[i] as number));
    absmax[b] = m;
    for (let i = b * blockSize; i < (b + 1) * blockSize; i++) {
      const code = nearestCode(Math.fround((data[i] as number) / m), book);
      const k = Math.floor(i / per);
      packed[k] = (packed[k] as number) | (code << ((i % per) * bits));
    }
  }
  return { format: 'nf', bits, packed, absmax, shape, blockSize };
}

/** argmin over the book of the float32 |x − c|, the first index on a tie; NaN (0/0) takes 0. */
export function nearestCode(x: number, book: Float32Array): number {
  let best = Number.POSITIVE_INFINITY;
  let code = 0;
  for (let c = 0; c < book.length; c++) {
    const d = Math.abs(Math.fround(x - (book[c] as number)));
    if (d < best) {
      best = d;
      code = c;
    }
  }
  return code;
}

/** The codes of {@link nfQuantize}'s output, one a byte, row-major. */
export function nfCodes(q: NfQuantized): Uint8Array {
  if (q?.format !== 'nf')
    throw new QuantizationError('q', `nfDequantize: expected nfQuantize's output ({ format: 'nf', … })`);
  const bits = checkNfBits(q.bits, 'nfDequantize');
  const n = q.shape.reduce((a, b) => a * b, 1);
  const per = Math.floor(8 / bits);
  if (q.packed.length !== Math.ceil(n / per) || q.absmax.length * q.blockSize !== n)
    throw new QuantizationError(
      'q',
      `nfDequantize: shape [${q.shape.join(', ')}] at ${bits} bits with blockSize ${q.blockSize} needs ${Math.ceil(n / per)} packed bytes and ${n / q.blockSize} absmax values, got ${q.packed.length} and ${q.absmax.length}`,
    );
  const mask = (1 << bits) - 1;
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) codes[i] = ((q.packed[Math.floor(i / per)] as number) >> ((i % per) * bits)) & mask;
  return codes;
}

/** Normal-float values in float32: `book[code] · max` of each value's block. */
export function nfDequantizeValues(q: NfQuantized): Float32Array {
  return blockValues(nfCodes(q), normalFloatCodebook(q.bits), q.absmax, q.blockSize);
}

/**
 * The weight back from {@link nfQuantize} (`NFQuantizer.dequantize_block`): `book[code] · max` of each
 * value's block, in float32, as a tensor of the original shape. The caller owns it.
 *
 * @example
 * ```ts
 * const w3 = nfDequantize(nfQuantize(w, { bits: 3 }));
 * ```
 */
export function nfDequantize(q: NfQuantized): tf.Tensor {
  return tf.tensor(nfDequantizeValues(q), q.shape, 'float32');
}
