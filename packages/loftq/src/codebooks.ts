/**
 * The code books of the quantizers: bitsandbytes' NF4 (its constants and the thresholds of its CUDA
 * kernel's decision tree) and the normal-float books of the LoftQ authors' `NFQuantizer` (2, 3, 4 bits).
 */
import { QuantizationError } from './errors';

/**
 * bitsandbytes' NF4 code book (`get_4bit_type('nf4')`, the kernel's `nf4_dequantization_lut`): 16
 * float32 values, index 0…15, ascending from −1 to 1 with an exact 0 at index 7. QLoRA builds it from
 * normal quantiles (8 positive, 7 negative, and 0), divided by the largest.
 */
export const NF4_CODE: Float32Array = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

/**
 * The 15 thresholds of `dQuantizeNF4` (bitsandbytes `csrc/kernels.cu`), ascending: float literals, so
 * float32. The kernel walks a binary tree over them with strict `>`; the code of a normalised value x is
 * the number of thresholds below it, so x exactly on a threshold takes the lower code and NaN takes 0.
 * Each is the float32 midpoint of two neighbouring codes (checked against the code book by the oracle).
 */
export const NF4_THRESHOLDS: Float32Array = Float32Array.from([
  -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
  -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
  0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
]);

/** The NF4 code of a normalised float32 value, as `dQuantizeNF4`: thresholds below it, NaN → 0. */
export function nf4Code(x: number): number {
  // the kernel's tree, unrolled: the same comparisons in the same order
  const t = NF4_THRESHOLDS;
  if (x > (t[7] as number)) {
    if (x > (t[11] as number)) {
      if (x > (t[13] as number)) return x > (t[14] as number) ? 15 : 14;
      return x > (t[12] as number) ? 13 : 12;
    }
    if (x > (t[9] as number)) return x > (t[10] as number) ? 11 : 10;
    return x > (t[8] as number) ? 9 : 8;
  }
  if (x > (t[3] as number)) {
    if (x > (t[5] as number)) return x > (t[6] as number) ? 7 : 6;
    return x > (t[4] as number) ? 5 : 4;
  }
  if (x > (t[1] as number)) return x > (t[2] as number) ? 3 : 2;
  return x > (t[0] as number) ? 1 : 0;
}

// AS 241 (Wichura 1988) PPND16: numerator and denominator coefficients, lowest power first
const CENTRAL_NUM = [
  3.3871328727963665, 133.14166789178438, 1971.5909503065513, 13731.69376550946, 45921.95393154987, 67265.7709270087,
  33430.57558358813, 2509.0809287301227,
];
const CENTRAL_DEN = [
  1, 42.31333070160091, 687.1870074920579, 5394.196021424751, 21213.794301586597, 39307.89580009271, 28729.085735721943,
  5226.495278852546,
];
const NEAR_NUM = [
  1.4234371107496835, 4.630337846156546, 5.769497221460691, 3.6478483247632045, 1.2704582524523684, 0.2417807251774506,
  0.022723844989269184, 0.0007745450142783414,
];
const NEAR_DEN = [
  1, 2.053191626637759, 1.6763848301838038, 0.6897673349851, 0.14810397642748008, 0.015198666563616457,
  0.0005475938084995345, 1.0507500716444169e-9,
];
const TAIL_NUM = [
  6.657904643501103, 5.463784911164114, 1.7848265399172913, 0.29656057182850487, 0.026532189526576124,
  0.0012426609473880784, 0.000027115555687434876, 2.0103343992922881e-7,
];
const TAIL_DEN = [
  1, 0.599832206555888, 0.1369298809227358, 0.014875361290850615, 0.0007868691311456133, 0.000018463183175100548,
  1.421511758316446e-7, 2.0442631033899397e-15,
];

/** Σ c[k]·x^k by Horner's rule. */
function poly(c: number[], x: number): number {
  let acc = 0;
  for (let k = c.length - 1; k >= 0; k--) acc = acc * x + (c[k] as number);
  return acc;
}

/**
 * Φ⁻¹(p), the standard normal quantile, to about 1e-16 relative (Wichura 1988, AS 241 `PPND16`): what
 * scipy's `norm.ppf` gives for these books, to float64 rounding.
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) {
    if (p === 0) return Number.NEGATIVE_INFINITY;
    if (p === 1) return Number.POSITIVE_INFINITY;
    return Number.NaN;
  }
  const q = p - 0.5;
  if (Math.abs(q) <= 0.425) {
    const r = 0.180625 - q * q;
    return (q * poly(CENTRAL_NUM, r)) / poly(CENTRAL_DEN, r);
  }
  let r = Math.sqrt(-Math.log(q < 0 ? p : 1 - p));
  let v: number;
  if (r <= 5) {
    r -= 1.6;
    v = poly(NEAR_NUM, r) / poly(NEAR_DEN, r);
  } else {
    r -= 5;
    v = poly(TAIL_NUM, r) / poly(TAIL_DEN, r);
  }
  return q < 0 ? -v : v;
}

/** `torch.linspace(start, end, steps)` in float32, as torch's CPU kernel computes it (each half from its end). */
function linspace32(start: number, end: number, steps: number): number[] {
  const s = Math.fround(start);
  const e = Math.fround(end);
  if (steps === 1) return [s];
  const step = Math.fround(Math.fround(e - s) / Math.fround(steps - 1));
  const half = Math.floor(steps / 2);
  return Array.from({ length: steps }, (_, i) =>
    i < half ? Math.fround(s + Math.fround(step * i)) : Math.fround(e - Math.fround(step * (steps - 1 - i))),
  );
}

const books = new Map<number, Float32Array>();

/**
 * The normal-float code book of the LoftQ authors' `NFQuantizer` (`create_normal_map(offset=0.9677083,
 * symmetric=False, num_bits)`, also PEFT ≤ 0.19's): for `v = 2^bits` values, the positive half is
 * `Φ⁻¹(linspace(offset, ½, v/2 + 1)[:-1])` (v/2 values), the negative half `−Φ⁻¹(linspace(offset, ½,
 * v/2)[:-1])` (v/2 − 1 values), and 0; sorted and divided by the largest, in float32, so the book runs
 * from −1 to 1 with one more positive value than negative. Linspace is float32 (torch's); the quantiles
 * float64 (scipy's), rounded to float32.
 *
 * - 2 bits: `[-1, 0, 0.33791524, 1]`.
 * - 3 bits: `[-1, -0.4786292, -0.21714179, 0, 0.16093020, 0.33791524, 0.56261700, 1]`.
 * - 4 bits: the same 16 values as bitsandbytes' NF4 ({@link NF4_CODE}, equal in float32). NF4 of
 *   bitsandbytes and `nfQuantize(w, { bits: 4 })` differ elsewhere: see {@link nfQuantize}.
 *
 * @example
 * ```ts
 * normalFloatCodebook(2); // Float32Array [-1, 0, 0.3379152417, 1]
 * ```
 */
export function normalFloatCodebook(bits: 2 | 3 | 4): Float32Array {
  if (bits !== 2 && bits !== 3 && bits !== 4)
    throw new QuantizationError(
      'bits',
      `normalFloatCodebook: bits is ${String(bits)}; the normal-float books have 2, 3 or 4 bits`,
    );
  const cached = books.get(bits);
  if (cached) return cached;
  const offset = 0.9677083;
  const v = 2 ** bits;
  const positive = linspace32(offset, 0.5, v / 2 + 1)
    .slice(0, -1)
    .map(normalQuantile);
  const negative = linspace32(offset, 0.5, v / 2)
    .slice(0, -1)
    .map((p) => -normalQuantile(p));
  const values = Float32Array.from([...positive, 0, ...negative]).sort();
  const max = values[values.length - 1] as number;
  const book = values.map((x) => Math.fround(x / max));
  books.set(bits, book);
  return book;
}

/** `book[code] · scale` of each value's block, in float32 (the dequantization of every block format here). */
export function blockValues(
  codes: Uint8Array,
  book: Float32Array,
  scales: Float32Array,
  blockSize: number,
): Float32Array {
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++)
    out[i] = (book[codes[i] as number] as number) * (scales[Math.floor(i / blockSize)] as number);
  return out;
}
