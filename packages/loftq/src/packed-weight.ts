/**
 * A quantized weight held on the backend and decoded on use: the codes packed into float32 words of 24
 * bits (every backend computes exactly on integers below 2²⁴ in float32, so packing and unpacking are
 * exact everywhere, webgpu included, where int32 arithmetic goes through float32), with the per-block
 * (or per-row) scales beside them.
 *
 * Word j holds, from its low bits up, the codes of flat positions j, j + W, j + 2W, … (W words, `perWord`
 * codes each): unpacking one slot of every word gives a contiguous run of codes, so the codes come back
 * in order by concatenation, without a transpose.
 */
import * as tf from '@tensorflow/tfjs-core';
import { NF4_CODE, NF4_THRESHOLDS, normalFloatCodebook } from './codebooks';
import { QuantizationError } from './errors';

/**
 * How a {@link QuantizedLinear} stores its weight: `'nf4'` (bitsandbytes' NF4), `'nf3'` and `'nf2'`
 * (the LoftQ authors' normal float), `'int8'` (bitsandbytes' vectorwise int8, from the float32 weight).
 */
export type QuantizedFormat = 'nf4' | 'nf3' | 'nf2' | 'int8';

/** The bits of each format. */
export const FORMAT_BITS: Record<QuantizedFormat, 2 | 3 | 4 | 8> = { nf4: 4, nf3: 3, nf2: 2, int8: 8 };

/** The format a bit width quantizes to. */
export function formatOfBits(bits: number, fn: string): QuantizedFormat {
  const f = ({ 4: 'nf4', 3: 'nf3', 2: 'nf2', 8: 'int8' } as Record<number, QuantizedFormat>)[bits];
  if (!f)
    throw new QuantizationError(
      'bits',
      `${fn}: bits is ${String(bits)}; quantized bases have 4 (NF4), 3 or 2 (normal float) or 8 (int8) bits`,
    );
  return f;
}

/** Codes per 24-bit word. */
export const perWord = (bits: number) => Math.floor(24 / bits);

/** The code book of a normal-float format. */
function bookOf(format: Exclude<QuantizedFormat, 'int8'>): Float32Array {
  return format === 'nf4' ? NF4_CODE : normalFloatCodebook(FORMAT_BITS[format] as 2 | 3);
}

/** The layout of a packed weight. */
export interface PackedLayout {
  format: QuantizedFormat;
  shape: [number, number];
  /** Values a scale covers: the block size, or the row length for int8. */
  blockSize: number;
}

/** How many codes are packed (the weight padded to whole blocks) and how many words hold them. */
export function packedSizes(layout: PackedLayout): { codes: number; words: number; scales: number } {
  const [out, inF] = layout.shape;
  const n = out * inF;
  const scales = layout.format === 'int8' ? out : Math.ceil(n / layout.blockSize);
  const codes = layout.format === 'int8' ? n : scales * layout.blockSize;
  return { codes, words: Math.ceil(codes / perWord(FORMAT_BITS[layout.format])), scales };
}

/** Packs codes (one a byte, in flat order; int8 codes offset by 128) into 24-bit words, on the host. */
export function packWords(codes: ArrayLike<number>, layout: PackedLayout): Float32Array {
  const bits = FORMAT_BITS[layout.format];
  const per = perWord(bits);
  const { words } = packedSizes(layout);
  const out = new Float32Array(words);
  for (let k = 0; k < per; k++) {
    const mult = 2 ** (bits * k);
    for (let j = 0; j < words; j++) {
      const i = k * words + j;
      if (i < codes.length) out[j] = (out[j] as number) + (codes[i] as number) * mult;
    }
  }
  return out;
}

/** Decodes packed words into the weight (float32, `[out, in]`). The caller owns it. */
export function decodePacked(words: tf.Tensor1D, scales: tf.Tensor1D, layout: PackedLayout): tf.Tensor2D {
  const bits = FORMAT_BITS[layout.format];
  const per = perWord(bits);
  const { codes: total, scales: nScales } = packedSizes(layout);
  const [out, inF] = layout.shape;
  const n = out * inF;
  const radix = 2 ** bits;
  // slot k of every word: rest = ⌊rest / 2^bits⌋ and the remainder, exact on integers below 2²⁴
  const slots: tf.Tensor[] = [];
  let rest: tf.Tensor = words;
  for (let k = 0; k < per - 1; k++) {
    const r = rest;
    const hi = tf.tidy(() => tf.floor(tf.mul(r, 1 / radix)));
    slots.push(tf.tidy(() => tf.sub(r, tf.mul(hi, radix))));
    if (r !== words) r.dispose();
    rest = hi;
  }
  slots.push(rest === words ? tf.clone(rest) : rest); // the top slot is what is left
  const codes = tf.tidy(() => tf.slice(tf.concat(slots, 0), [0], [total]));
  tf.dispose(slots);
  const w = tf.tidy(() => {
    if (layout.format === 'int8')
      // q · absmax · (1/127), in that order (bitsandbytes' int8_vectorwise_dequant)
      return tf.mul(
        tf.mul(tf.reshape(tf.sub(codes, 128), [out, inF]), tf.reshape(scales, [out, 1])),
        Math.fround(7.874015718698502e-3),
      );
    const values = tf.gather(tf.tensor1d(bookOf(layout.format)), tf.cast(codes, 'int32'));
    const scaled = tf.mul(tf.reshape(values, [nScales, layout.blockSize]), tf.reshape(scales, [nScales, 1]));
    return tf.reshape(total === n ? scaled : tf.slice(tf.reshape(scaled, [-1]), [0], [n]), [out, inF]);
  });
  codes.dispose();
  return w as tf.Tensor2D;
}

/** A float tensor's values, stepping through `steps` frees each intermediate as soon as the next exists. */
function chain(start: tf.Tensor, steps: ((t: tf.Tensor) => tf.Tensor)[], keepStart = true): tf.Tensor {
  let t = start;
  for (const step of steps) {
    const next = tf.tidy(() => step(t));
    if (t !== start || !keepStart) t.dispose();
    t = next;
  }
  return t;
}

/**
 * Quantizes a float32 weight `[out, in]` on the backend into packed words and scales, with the same
 * rules as the host quantizers: NF4 as {@link nf4Quantize} (scale by the float32 reciprocal of the
 * block's absmax, count the thresholds below), 2 and 3 bits as {@link nfQuantize} (divide by the max,
 * nearest code, the first on a tie; the block size must divide the weight), int8 as {@link int8Quantize}
 * (without the float16 rounding). On cpu and wasm the codes equal the host quantizers' bit for bit; on
 * webgpu, whose float32 division is not correctly rounded, a value within an ulp or two of a
 * threshold may take the neighbouring code. Intermediates are freed as it goes (peak about three
 * copies of the weight). The caller owns the results.
 */
export function quantizePacked(w: tf.Tensor2D, layout: PackedLayout): { words: tf.Tensor1D; scales: tf.Tensor1D } {
  const [out, inF] = layout.shape;
  const n = out * inF;
  const { codes: total, scales: nScales, words: nWords } = packedSizes(layout);
  const bits = FORMAT_BITS[layout.format];
  let scales: tf.Tensor1D;
  let codes: tf.Tensor;
  if (layout.format === 'int8') {
    scales = tf.tidy(() => tf.max(tf.abs(w), 1)) as tf.Tensor1D;
    codes = tf.tidy(() => {
      const scale = tf.reshape(tf.div(127, scales), [out, 1]);
      const q = tf.round(tf.mul(w, scale));
      // a zero row: 127/0 · 0 is NaN; its codes are 0
      const zero = tf.reshape(tf.equal(scales, 0), [out, 1]);
      return tf.reshape(tf.add(tf.where(tf.broadcastTo(zero, [out, inF]), tf.zerosLike(q), q), 128), [-1]);
    });
  } else {
    const blocks = tf.tidy(() => {
      const flat = tf.reshape(w, [-1]);
      return tf.reshape(total === n ? flat : tf.concat([flat, tf.zeros([total - n])]), [nScales, layout.blockSize]);
    });
    scales = tf.tidy(() => tf.max(tf.abs(blocks), 1)) as tf.Tensor1D;
    if (layout.format === 'nf4') {
      // bitsandbytes: x · (1/absmax), then the number of thresholds below it, found by binary search as the
      // kernel's tree does (0·∞ = NaN for an all-zero block compares false everywhere: code 0)
      const xn = tf.tidy(() => tf.mul(blocks, tf.reshape(tf.div(1, scales), [nScales, 1])));
      blocks.dispose();
      const thresholds = tf.tensor1d(Float32Array.from([...NF4_THRESHOLDS, Number.POSITIVE_INFINITY]));
      const steps = [8, 4, 2, 1].map((step) => (code: tf.Tensor) => {
        const t = tf.gather(thresholds, tf.cast(tf.add(code, step - 1), 'int32'));
        return tf.add(code, tf.mul(tf.cast(tf.greater(xn, t), 'float32'), step));
      });
      codes = chain(tf.zerosLike(xn), steps, false);
      tf.dispose([xn, thresholds]);
    } else {
      // the LoftQ authors: x / max, then the nearest code (the first index on a tie; NaN keeps 0)
      const xn = tf.tidy(() => tf.div(blocks, tf.reshape(scales, [nScales, 1])));
      blocks.dispose();
      const book = bookOf(layout.format);
      let best = tf.tidy(() => tf.abs(tf.sub(xn, book[0] as number)));
      codes = tf.zerosLike(xn);
      for (let c = 1; c < book.length; c++) {
        const [nextBest, nextCodes] = tf.tidy(() => {
          const d = tf.abs(tf.sub(xn, book[c] as number));
          const better = tf.less(d, best);
          return [tf.where(better, d, best), tf.where(better, tf.fill(d.shape, c), codes)];
        });
        tf.dispose([best, codes]);
        best = nextBest as tf.Tensor;
        codes = nextCodes as tf.Tensor;
      }
      tf.dispose([best, xn]);
    }
  }
  const per = perWord(bits);
  const words = tf.tidy(() => {
    const flat = tf.reshape(codes, [-1]);
    const padded = per * nWords === total ? flat : tf.concat([flat, tf.zeros([per * nWords - total])]);
    // word j holds codes j, nWords + j, 2·nWords + j, …: slot k is the k-th slice of nWords codes, added
    // slice by slice (a sum over axis 0 of [per, nWords] makes tfjs transpose it, and on webgpu that
    // transpose's dispatch exceeds the limits at 4096²); the sums are integers below 2²⁴, exact
    let acc = tf.slice(padded, [0], [nWords]);
    for (let k = 1; k < per; k++) acc = tf.add(acc, tf.mul(tf.slice(padded, [k * nWords], [nWords]), 2 ** (bits * k)));
    return acc;
  }) as tf.Tensor1D;
  codes.dispose();
  return { words, scales };
}
