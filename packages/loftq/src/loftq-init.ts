import * as tf from '@tensorflow/tfjs-core';
import { matrix64, svd, svdLowRank } from '@lora/linalg';
import { QuantizationError } from './errors';
import { int8DequantizeValues, int8Quantize } from './int8';
import { nf4DequantizeValues, nf4Quantize } from './nf4';
import { nfDequantizeValues, nfQuantize } from './normal-float';
import { type WeightInput, checkBlockSize, readWeight } from './weight-input';

/** The bit widths LoftQ quantizes with: 4 is bitsandbytes' NF4, 8 its int8, 2 and 3 the LoftQ authors' normal float. */
export type LoftqBits = 2 | 3 | 4 | 8;

/** How {@link loftqInit} finds the best rank-r approximation of each residual. */
export type LoftqSvd = 'full' | 'randomized' | 'auto';

/** Options of {@link loftqInit}; PEFT's `loftq_init(weight, num_bits, reduced_rank, num_iter)` and more. */
export interface LoftqInitOptions {
  /** Quantization bits (PEFT's `num_bits`): 4 (NF4), 8 (int8), or 2 and 3 (normal float), which PEFT 0.21 lacks. */
  numBits: LoftqBits;
  /** The adapter's rank r (PEFT's `reduced_rank`): below min(out, in). */
  reducedRank: number;
  /** Alternating steps T (PEFT's `num_iter`, default 1). */
  numIter?: number;
  /** Block size of the 2-, 3- and 4-bit quantizers (default 64, bitsandbytes' and PEFT's). */
  blockSize?: number;
  /**
   * The SVD of each residual: `'full'` is PEFT's (a full float64 SVD, keeping the top r), exact and the
   * default up to min(out, in) = 1024; `'randomized'` is `svdLowRank` with `svdOversample` extra columns
   * and `svdIterations` power iterations on the active backend, for larger weights (`'auto'`, the
   * default, picks by size). A randomized top-r of a quantization residual, whose spectrum is flat,
   * is not the exact one: the error it leaves is a little larger (see the README's table).
   */
  svd?: LoftqSvd;
  /** Power iterations of the randomized SVD (default 4). */
  svdIterations?: number;
  /** Extra sketch columns of the randomized SVD (default max(r, 16)). */
  svdOversample?: number;
  /** Seed of the randomized SVD's sketch (default 0). */
  seed?: number;
  /** Called after each alternating step with ‖W − Q − B·A‖_F / ‖W‖_F (computing it costs one more product). */
  onIteration?: (step: { iteration: number; numIter: number; relativeError: number }) => void;
  /** Stops between steps (and before the first), rejecting with the signal's reason. */
  signal?: AbortSignal;
}

/** What {@link loftqInit} returns; the caller owns the three tensors. */
export interface LoftqInitResult {
  /** Q: the weight quantized and dequantized (PEFT's `dequantized_weight`), `[out, in]`. */
  dequantized: tf.Tensor2D;
  /** A = √S·Vhᵣ (PEFT's `lora_A`), `[r, in]`. */
  loraA: tf.Tensor2D;
  /** B = Uᵣ·√S (PEFT's `lora_B`), `[out, r]`. */
  loraB: tf.Tensor2D;
}

/** Above this min(out, in), `svd: 'auto'` stops taking a full float64 SVD. */
const FULL_SVD_LIMIT = 1024;

/** Checks LoftQ's bits. */
export function checkLoftqBits(bits: unknown, fn: string, field = 'numBits'): LoftqBits {
  if (bits !== 2 && bits !== 3 && bits !== 4 && bits !== 8)
    throw new QuantizationError(
      field,
      `${fn}: ${field} is ${String(bits)}; LoftQ quantizes with 2, 3 or 4 bits (normal float; 4 is bitsandbytes' NF4) or 8 (bitsandbytes' int8)`,
    );
  return bits;
}

/**
 * dequantize(quantize(x)) with the quantizer of `bits`, as PEFT's `loftq_init` does each step: NF4
 * (bitsandbytes, partial last block allowed), int8 (bitsandbytes' `Int8Params`, float16 input), or the
 * normal-float quantizer at 2 and 3 bits (the block size must divide the weight).
 */
export function fakeQuantize(data: Float32Array, shape: number[], bits: LoftqBits, blockSize = 64): Float32Array {
  const w = { data, shape };
  if (bits === 4) return nf4DequantizeValues(nf4Quantize(w, { blockSize }));
  if (bits === 8) return int8DequantizeValues(int8Quantize(w, { float16Input: true }));
  return nfDequantizeValues(nfQuantize(w, { bits, blockSize }));
}

function checkOptions(shape: number[], o: LoftqInitOptions, fn: string) {
  const bits = checkLoftqBits(o?.numBits, fn);
  const [out, inF] = shape as [number, number];
  const k = Math.min(out, inF);
  const r = o.reducedRank;
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1)
    throw new QuantizationError('reducedRank', `${fn}: reducedRank is ${String(r)}; it must be a positive integer`);
  if (r >= k)
    throw new QuantizationError(
      'reducedRank',
      `${fn}: reducedRank ${r} is not below min(out, in) = ${k} of the weight [${out}, ${inF}]: B·A would hold the whole quantization error, so the LoRA weights would just restore the full-precision weight; choose a rank below ${k}`,
    );
  const numIter = o.numIter ?? 1;
  if (typeof numIter !== 'number' || !Number.isInteger(numIter) || numIter < 1)
    throw new QuantizationError(
      'numIter',
      `${fn}: numIter is ${String(numIter)}; Number of iterations must be greater than 0 (PEFT's check)`,
    );
  const blockSize = checkBlockSize(o.blockSize ?? 64, fn);
  if ((bits === 2 || bits === 3) && (out * inF) % blockSize !== 0)
    throw new QuantizationError(
      'blockSize',
      `${fn}: at ${bits} bits the normal-float quantizer needs the block size (${blockSize}) to divide the weight's ${out * inF} values ([${out}, ${inF}]); choose a block size that divides it, or 4 bits (NF4 allows a shorter last block)`,
    );
  const method = o.svd ?? 'auto';
  if (method !== 'full' && method !== 'randomized' && method !== 'auto')
    throw new QuantizationError('svd', `${fn}: svd is ${String(method)}; use 'full', 'randomized' or 'auto'`);
  return { bits, r, numIter, blockSize, full: useFullSvd(method, shape) };
}

/** The SVD settings of {@link loftqInit} that {@link lowRankFactors} reads. */
export type SvdSettings = Pick<LoftqInitOptions, 'svdIterations' | 'svdOversample' | 'seed'>;

/** Whether `svd` (default `'auto'`) takes the full SVD of an `[m, n]` residual. */
export function useFullSvd(svd: LoftqSvd | undefined, shape: readonly number[]): boolean {
  const method = svd ?? 'auto';
  return method === 'full' || (method === 'auto' && Math.min(...shape) <= FULL_SVD_LIMIT);
}

/**
 * L = Uᵣ·√Sᵣ and R = √Sᵣ·Vhᵣ of E's best rank-r approximation (PEFT's `_low_rank_decomposition`), as
 * float32 tensors `[out, r]` and `[r, in]`: the full float64 SVD, or a randomized one on the backend.
 */
export async function lowRankFactors(
  e: Float32Array,
  shape: [number, number],
  r: number,
  full: boolean,
  o: SvdSettings = {},
): Promise<{ L: tf.Tensor2D; R: tf.Tensor2D }> {
  const [m, n] = shape;
  if (full) {
    // PEFT's _low_rank_decomposition: torch.linalg.svd(E), √S into each factor (here in float64)
    const { U, S, Vh } = svd(matrix64(m, n, Float64Array.from(e)));
    const k = S.length;
    const L = new Float32Array(m * r);
    const R = new Float32Array(r * n);
    for (let j = 0; j < r; j++) {
      const s = Math.sqrt(S[j] as number);
      for (let i = 0; i < m; i++) L[i * r + j] = (U.data[i * k + j] as number) * s;
      for (let c = 0; c < n; c++) R[j * n + c] = (Vh.data[j * n + c] as number) * s;
    }
    return { L: tf.tensor2d(L, [m, r]), R: tf.tensor2d(R, [r, n]) };
  }
  const q = Math.min(Math.min(m, n), r + (o.svdOversample ?? Math.max(r, 16)));
  const t = tf.tensor2d(e, shape);
  const { U, S, V } = await svdLowRank(t, { q, niter: o.svdIterations ?? 4, seed: o.seed ?? 0 });
  t.dispose();
  const out = tf.tidy(() => {
    const sq = tf.sqrt(tf.slice(S, [0], [r]));
    return {
      L: tf.mul(tf.slice(U, [0, 0], [-1, r]), sq) as tf.Tensor2D,
      R: tf.transpose(tf.mul(tf.slice(V, [0, 0], [-1, r]), sq)) as tf.Tensor2D,
    };
  });
  tf.dispose([U, S, V]);
  return out;
}

/**
 * LoftQ's initialisation of one weight (PEFT 0.21's `loftq_init`, arXiv 2310.08659): starting from
 * res = W, each of `numIter` steps quantizes res (Q = dequantize(quantize(res))) and takes the best
 * rank-r approximation B·A of W − Q by SVD (√S into each factor, so ‖A‖ = ‖B‖); the next step quantizes
 * res = W − B·A. Returns Q (the base weight to train over) and the LoRA factors, so that Q + B·A ≈ W.
 * Works at 2, 3, 4 and 8 bits on any backend (PEFT needs bitsandbytes and CUDA, and 4 or 8 bits).
 *
 * As in PEFT, the factors assume a LoRA scaling α/r of 1: with another scaling the forward adds s·B·A
 * and the correction is off by s (PEFT issue #1982); use `loraAlpha = r`.
 *
 * @example
 * ```ts
 * const { dequantized, loraA, loraB } = await loftqInit(weight, { numBits: 4, reducedRank: 16, numIter: 5 });
 * // dequantized + loraB·loraA is closer to weight than dequantized alone
 * tf.dispose([dequantized, loraA, loraB]);
 * ```
 */
export async function loftqInit(weight: WeightInput, options: LoftqInitOptions): Promise<LoftqInitResult> {
  const shape = weight instanceof tf.Tensor ? [...weight.shape] : [...(weight?.shape ?? [])];
  if (shape.length !== 2)
    throw new QuantizationError(
      'weight',
      `loftqInit: the weight must be 2-D ([out, in], as a Linear's), got shape [${shape.join(', ')}] (${shape.length}-D)`,
    );
  const { bits, r, numIter, blockSize, full } = checkOptions(shape, options, 'loftqInit');
  const values = weight instanceof tf.Tensor ? { data: await weight.data(), shape } : weight;
  const { data: w } = readWeight(values as WeightInput, 'loftqInit', 2);
  const dims = shape as [number, number];
  options.signal?.throwIfAborted();
  const wt = tf.tensor2d(w, dims);
  const wNorm = options.onIteration ? Math.hypot(...norms(w)) : 0;
  let res: Float32Array = w;
  let factors: { L: tf.Tensor2D; R: tf.Tensor2D } | null = null;
  let q: Float32Array = w;
  try {
    for (let i = 0; i < numIter; i++) {
      options.signal?.throwIfAborted();
      q = fakeQuantize(res, shape, bits, blockSize);
      const e = new Float32Array(w.length);
      for (let j = 0; j < w.length; j++) e[j] = (w[j] as number) - (q[j] as number);
      if (factors) tf.dispose([factors.L, factors.R]);
      factors = await lowRankFactors(e, dims, r, full, options);
      const last = i + 1 === numIter;
      if (options.onIteration) {
        const f = factors;
        const left = tf.tidy(() => tf.sub(tf.tensor2d(e, dims), tf.matMul(f.L, f.R)));
        const err = Math.hypot(...norms(await left.data()));
        left.dispose();
        options.onIteration({ iteration: i + 1, numIter, relativeError: err / wNorm });
      }
      if (last) break;
      const f = factors;
      const next = tf.tidy(() => tf.sub(wt, tf.matMul(f.L, f.R)));
      res = (await next.data()) as Float32Array;
      next.dispose();
    }
  } catch (e) {
    if (factors) tf.dispose([factors.L, factors.R]);
    wt.dispose();
    throw e;
  }
  wt.dispose();
  const { L, R } = factors as { L: tf.Tensor2D; R: tf.Tensor2D };
  return { dequantized: tf.tensor2d(q, dims), loraA: R, loraB: L };
}

/** Partial sums of squares of a long array in chunks, so that Math.hypot never sees millions of arguments. */
function norms(a: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let s = 0; s < a.length; s += 4096) {
    let acc = 0;
    for (let i = s; i < Math.min(a.length, s + 4096); i++) acc += (a[i] as number) ** 2;
    out.push(Math.sqrt(acc));
  }
  return out;
}
