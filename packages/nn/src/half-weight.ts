/**
 * A matrix kept on the backend in its checkpoint's 16-bit encoding (bf16 or f16 codes) and decoded to
 * float32 on use. tfjs has no 16-bit dtype, so the codes are packed into int32 words, row by row:
 *
 * - `'pairs'`: two codes per word (2 bytes a value, the file's size). Unpacking divides the words by
 *   2¹⁶ and corrects the quotient with exact int32 multiplication and subtraction (the wasm backend
 *   divides int32 in float32, one too large near ±2³¹): exact on the cpu, wasm and tensorflow backends.
 * - `'bytes'`: three bytes per word, below 2²⁴ (2.67 bytes a value). webgpu computes int32 arithmetic
 *   in float32, exact only on integers below 2²⁴, so it gets this layout.
 *
 * Word j of a row holds, from its low bits up, the units at positions j, j + W, j + 2W, … of that row
 * (W words a row): unpacking one slot of every word gives a contiguous run, so a row comes back in
 * order by concatenation. A unit is a code (`'pairs'`) or a byte (`'bytes'`: the row's low bytes, then
 * its high bytes). Codes become float32 through a gather from the 65 536-entry table of every code's
 * value, which is exact on every backend: every bf16 and f16 value (subnormals, ±inf, NaN) is a float32.
 */
import * as tf from '@tensorflow/tfjs-core';
import { bf16ToFloat32, f16ToFloat32, float32ToBf16, float32ToF16 } from '@lora/tensor';

/** The 16-bit encodings a checkpoint stores weights in. */
export type HalfFormat = 'bf16' | 'f16';

/** How codes are packed into int32 words (see the module's comment). */
export type HalfPacking = 'pairs' | 'bytes';

/**
 * The packing exact on the active backend: `'bytes'` on webgpu, `'pairs'` elsewhere.
 *
 * @example
 * ```ts
 * await initBackend('wasm');
 * defaultHalfPacking(); // 'pairs'
 * ```
 */
export function defaultHalfPacking(): HalfPacking {
  return tf.getBackend() === 'webgpu' ? 'bytes' : 'pairs';
}

const SLOT = { pairs: { bits: 16, perWord: 2 }, bytes: { bits: 8, perWord: 3 } } as const;

/**
 * Int32 words one packed row of `cols` codes takes.
 *
 * @example
 * ```ts
 * halfRowWords(576, 'pairs'); // 288: two codes a word
 * halfRowWords(576, 'bytes'); // 384: 1152 bytes, three a word
 * ```
 */
export function halfRowWords(cols: number, packing: HalfPacking): number {
  const units = packing === 'pairs' ? cols : 2 * cols;
  return Math.ceil(units / SLOT[packing].perWord);
}

const tables: Partial<Record<HalfFormat, Float32Array>> = {};

/**
 * Every code's float32 value (host memory, built once per format and shared: do not write into it).
 *
 * @example
 * ```ts
 * halfTable('bf16')[0x3f80]; // 1
 * halfTable('f16')[0x3c00]; // 1
 * ```
 */
export function halfTable(format: HalfFormat): Float32Array {
  let t = tables[format];
  if (!t) {
    const codes = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) codes[i] = i;
    t = format === 'bf16' ? bf16ToFloat32(codes) : f16ToFloat32(codes);
    tables[format] = t;
  }
  return t;
}

/**
 * Rounds float32 values to codes (round to nearest even, as torch's `.to(torch.bfloat16 / float16)`).
 *
 * @example
 * ```ts
 * encodeHalf(new Float32Array([1, -2]), 'bf16'); // Uint16Array [0x3f80, 0xc000]
 * ```
 */
export function encodeHalf(values: Float32Array, format: HalfFormat): Uint16Array {
  return format === 'bf16' ? float32ToBf16(values) : float32ToF16(values);
}

/**
 * Packs a row-major `[rows, cols]` matrix of codes into `[rows, W]` int32 words (on the host), W =
 * {@link halfRowWords}`(cols, packing)`. Throws when `codes` does not hold `rows · cols` values.
 *
 * @example
 * ```ts
 * const codes = encodeHalf(new Float32Array([1, 2, 3, 4, 5, 6]), 'bf16');
 * const words = tf.tensor2d(packHalfCodes(codes, 2, 3, 'pairs'), [2, halfRowWords(3, 'pairs')], 'int32');
 * decodeHalfWords(words, 3, 'bf16', 'pairs').print(); // [[1, 2, 3], [4, 5, 6]]
 * words.dispose();
 * ```
 */
export function packHalfCodes(codes: Uint16Array, rows: number, cols: number, packing: HalfPacking): Int32Array {
  if (codes.length !== rows * cols)
    throw new Error(`packHalfCodes: ${codes.length} codes do not fill [${rows}, ${cols}] (${rows * cols} values)`);
  const { bits, perWord } = SLOT[packing];
  const w = halfRowWords(cols, packing);
  const units = packing === 'pairs' ? cols : 2 * cols;
  const out = new Int32Array(rows * w);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let j = 0; j < w; j++) {
      let word = 0;
      for (let k = 0; k < perWord; k++) {
        const u = k * w + j;
        if (u >= units) break;
        const unit =
          packing === 'pairs'
            ? (codes[base + u] as number)
            : u < cols
              ? (codes[base + u] as number) & 0xff
              : (codes[base + u - cols] as number) >>> 8;
        word |= unit << (bits * k); // pairs: the high code lands in the sign bit, unpacking undoes it
      }
      out[r * w + j] = word;
    }
  }
  return out;
}

/**
 * Decodes `[n, W]` words (all rows of a matrix, or rows gathered from it) to float32 `[n, cols]`.
 * Everything it allocates but the result is freed; the caller owns the result. `via: 'host'` decodes
 * in JavaScript (the default on cpu and wasm for `'pairs'`), `'ops'` with tensor ops on the backend.
 *
 * @example
 * ```ts
 * const codes = encodeHalf(new Float32Array([0.5, -1]), 'f16');
 * const words = tf.tensor2d(packHalfCodes(codes, 1, 2, 'bytes'), [1, halfRowWords(2, 'bytes')], 'int32');
 * const w = decodeHalfWords(words, 2, 'f16', 'bytes'); // [[0.5, -1]]
 * words.dispose();
 * w.dispose();
 * ```
 */
export function decodeHalfWords(
  words: tf.Tensor,
  cols: number,
  format: HalfFormat,
  packing: HalfPacking,
  options: { via?: 'ops' | 'host' } = {},
): tf.Tensor2D {
  const { bits, perWord } = SLOT[packing];
  const n = words.shape[0] as number;
  const via = options.via ?? (packing === 'pairs' && HOST_BACKENDS.has(tf.getBackend()) ? 'host' : 'ops');
  if (via === 'host') return decodeOnHost(words, n, cols, format, packing);
  return tf.tidy(() => {
    const radix = tf.scalar(2 ** bits, 'int32');
    const slots: tf.Tensor[] = [];
    let q = words;
    for (let k = 0; k < perWord; k++) {
      // The wasm backend divides int32 in float32: above 2²⁴ the quotient may come out one too large
      // (never too small: q·2¹⁶ is a float32, and rounding is monotone). The remainder, in exact
      // (wrapping) int32 arithmetic, is then negative: put the one back.
      // (Only a pair's first division sees values above 2²⁴.)
      const rough = tf.floorDiv(q, radix);
      const rem = tf.sub(q, tf.mul(rough, radix));
      if (packing === 'bytes' || k > 0) {
        slots.push(rem);
        q = rough;
        continue;
      }
      const over = tf.cast(tf.less(rem, 0), 'int32');
      slots.push(tf.add(rem, tf.mul(over, radix))); // in [0, 2^bits)
      q = tf.sub(rough, over);
    }
    const units = tf.concat(slots, 1);
    const codes =
      packing === 'pairs'
        ? tf.slice(units, [0, 0], [n, cols])
        : tf.add(
            tf.slice(units, [0, 0], [n, cols]),
            tf.mul(tf.slice(units, [0, cols], [n, cols]), tf.scalar(256, 'int32')),
          );
    const table = tf.tensor1d(halfTable(format));
    return tf.reshape(tf.gather(table, tf.reshape(codes, [-1])), [n, cols]) as tf.Tensor2D;
  });
}

/**
 * Backends whose tensors live in host memory, where a synchronous read costs a copy: decoding there in
 * JavaScript (a shift for bf16, a table look-up for f16) is exact and an order of magnitude faster than
 * the ops path, whose gather from the table dominates on wasm (see bench/half-decode.ts).
 */
const HOST_BACKENDS = new Set(['cpu', 'wasm']);

function decodeOnHost(
  words: tf.Tensor,
  n: number,
  cols: number,
  format: HalfFormat,
  packing: HalfPacking,
): tf.Tensor2D {
  const src = words.dataSync() as Int32Array;
  const w = halfRowWords(cols, packing);
  const out = new Float32Array(n * cols);
  if (packing === 'pairs') {
    const bitsOut = new Uint32Array(out.buffer);
    const table = halfTable(format);
    for (let r = 0; r < n; r++) {
      const row = r * w;
      const base = r * cols;
      const hiCount = cols - w; // the second slot holds positions w … cols − 1
      if (format === 'bf16') {
        for (let j = 0; j < w; j++) bitsOut[base + j] = (src[row + j] as number) << 16;
        for (let j = 0; j < hiCount; j++) bitsOut[base + w + j] = (src[row + j] as number) & 0xffff0000;
      } else {
        for (let j = 0; j < w; j++) out[base + j] = table[(src[row + j] as number) & 0xffff] as number;
        for (let j = 0; j < hiCount; j++) out[base + w + j] = table[(src[row + j] as number) >>> 16] as number;
      }
    }
  } else {
    const table = halfTable(format);
    const units = new Uint8Array(2 * cols);
    for (let r = 0; r < n; r++) {
      for (let u = 0; u < 2 * cols; u++) {
        const k = Math.floor(u / w);
        units[u] = ((src[r * w + (u - k * w)] as number) >>> (8 * k)) & 0xff;
      }
      for (let i = 0; i < cols; i++)
        out[r * cols + i] = table[(units[i] as number) | ((units[cols + i] as number) << 8)] as number;
    }
  }
  return tf.tensor2d(out, [n, cols]);
}

/** Words `[rows, W]` for a float32 matrix, rounded to `format` on the host (reads the tensor back). */
export function packHalfTensor(w: tf.Tensor2D, format: HalfFormat, packing: HalfPacking): tf.Tensor2D {
  const [rows, cols] = w.shape;
  const codes = encodeHalf(w.dataSync() as Float32Array, format);
  return tf.tensor2d(packHalfCodes(codes, rows, cols, packing), [rows, halfRowWords(cols, packing)], 'int32');
}

/**
 * Rounds a float32 tensor to the nearest bf16 / f16 value (as float32), on the host. The caller owns the result.
 *
 * @example
 * ```ts
 * const x = tf.tensor1d([1.00390625]);
 * const r = roundToHalf(x, 'bf16'); // [1]: bf16 has 8 significant bits, the tie goes to even
 * x.dispose();
 * r.dispose();
 * ```
 */
export function roundToHalf(t: tf.Tensor, format: HalfFormat): tf.Tensor {
  const codes = encodeHalf(t.dataSync() as Float32Array, format);
  const table = halfTable(format);
  return tf.tensor(
    Float32Array.from(codes, (c) => table[c] as number),
    t.shape,
    'float32',
  );
}
