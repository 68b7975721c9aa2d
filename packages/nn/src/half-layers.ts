import * as tf from '@tensorflow/tfjs-core';
import {
  type HalfFormat,
  type HalfPacking,
  decodeHalfWords,
  defaultHalfPacking,
  halfRowWords,
  packHalfCodes,
  packHalfTensor,
} from './half-weight';
import { skipInitScope } from './init';
import { Embedding, Linear } from './layers';
import { type Module, makeParameter } from './module';

/** Options of {@link HalfLinear} and {@link HalfEmbedding}. */
export interface HalfStorageOptions {
  /** The 16-bit encoding the weight is kept in (default `'bf16'`). */
  format?: HalfFormat;
  /** How codes are packed (default: the exact one for the active backend, see {@link defaultHalfPacking}). */
  packing?: HalfPacking;
}

/**
 * A layer whose weight is stored encoded and decoded on use: what `@lora/core` reads and writes instead
 * of `weight` when it merges into such a layer ({@link HalfLinear}, {@link HalfEmbedding}).
 */
export interface StoredWeightLayer extends Module {
  /** How the weight is stored (`'bf16'`, `'f16'`, or a quantized format). */
  readonly storageFormat: string;
  /** The weight's float32 shape (`[out, in]`, `[num, dim]`); the stored parameter has another. */
  readonly weightShape: number[];
  /** The weight as float32 in its own shape; the caller owns it. */
  decodeWeight(): tf.Tensor;
  /** Stores a float32 weight (rounded to the storage format); the tensor is not taken over. */
  setWeight(w: tf.Tensor): void;
  /** `t` rounded as {@link setWeight} would round it, as float32; the caller owns the result. */
  roundToStorage(t: tf.Tensor): tf.Tensor;
}

/** Whether a module keeps its weight encoded ({@link StoredWeightLayer}). */
export function isStoredWeightLayer(m: unknown): m is StoredWeightLayer {
  return (
    typeof m === 'object' &&
    m !== null &&
    typeof (m as StoredWeightLayer).decodeWeight === 'function' &&
    typeof (m as StoredWeightLayer).setWeight === 'function' &&
    typeof (m as StoredWeightLayer).roundToStorage === 'function'
  );
}

/**
 * Why `what` cannot run on `m`, when `m` keeps its weight encoded ({@link StoredWeightLayer}): the message
 * to throw, naming the layer and the fix; null for a layer whose weight is plain float32. Code that reads
 * or writes `m.weight` as float values calls this first.
 *
 * @example
 * ```ts
 * const why = storedWeightRefusal(layer, `trainable_token_indices on '${path}'`);
 * if (why) throw new Error(why);
 * ```
 */
export function storedWeightRefusal(m: unknown, what: string): string | null {
  if (!isStoredWeightLayer(m)) return null;
  return `${what} needs the base weight as float32, but this ${(m as object).constructor.name} keeps it encoded (${m.storageFormat}): load the model with weightStorage: 'float32' for it`;
}

function zeroWords(rows: number, cols: number, packing: HalfPacking): tf.Tensor2D {
  return tf.zeros([rows, halfRowWords(cols, packing)], 'int32') as tf.Tensor2D;
}

function checkFormat(format: unknown, where: string): HalfFormat {
  if (format !== 'bf16' && format !== 'f16')
    throw new Error(`${where}: format is ${JSON.stringify(format)}; 16-bit storage is 'bf16' or 'f16'`);
  return format;
}

function checkPacking(packing: unknown, where: string): HalfPacking {
  if (packing !== 'pairs' && packing !== 'bytes')
    throw new Error(
      `${where}: packing is ${JSON.stringify(packing)}; use 'pairs' (cpu, wasm, tensorflow) or 'bytes' (webgpu)`,
    );
  if (packing === 'pairs' && tf.getBackend() === 'webgpu')
    throw new Error(
      `${where}: packing 'pairs' is not exact on webgpu, which computes int32 arithmetic in float32; use 'bytes' (the default there)`,
    );
  return packing;
}

function roundVia(t: tf.Tensor, format: HalfFormat, packing: HalfPacking): tf.Tensor {
  const flat = tf.reshape(t, [1, t.size]) as tf.Tensor2D;
  const words = packHalfTensor(flat, format, packing);
  const out = decodeHalfWords(words, t.size, format, packing);
  const shaped = tf.reshape(out, t.shape);
  tf.dispose([flat, words, out]);
  return shaped;
}

/**
 * A Linear whose frozen weight `[out, in]` stays in its checkpoint's 16-bit encoding (bf16 or f16)
 * on the backend: the `weight` parameter holds the packed codes (int32 words, frozen), decoded to
 * float32 inside the forward, and again for the input's gradient in the backward pass; no float32
 * copy lives between calls. The bias (if any) is float32. `getPeftModel` wraps it like a Linear, and
 * merging an adapter into it rounds the merged weight back to the 16-bit encoding, as PEFT merging
 * into a bf16 model does.
 *
 * @example
 * ```ts
 * const half = HalfLinear.fromLinear(linear, { format: 'bf16' }); // linear is left as it was
 * const y = half.call(x);       // linear(x) with the weight rounded to bf16
 * const w = half.decodeWeight(); // float32 [out, in]; the caller disposes it
 * ```
 */
export class HalfLinear extends Linear implements StoredWeightLayer {
  readonly format: HalfFormat;
  readonly packing: HalfPacking;

  /** A layer of zero codes (load codes with {@link setCodes}), built without drawing initial weights. */
  constructor(inFeatures: number, outFeatures: number, options: HalfStorageOptions & { bias?: boolean } = {}) {
    const format = checkFormat(options.format ?? 'bf16', 'HalfLinear');
    const packing = checkPacking(options.packing ?? defaultHalfPacking(), 'HalfLinear');
    // Linear's float32 weight (zeros, one layer's worth, freed at once) is replaced by the words
    skipInitScope(1);
    try {
      super(inFeatures, outFeatures, { bias: options.bias ?? true });
    } finally {
      skipInitScope(-1);
    }
    this.format = format;
    this.packing = packing;
    this.setParameter('weight', makeParameter(zeroWords(outFeatures, inFeatures, packing), false));
  }

  get storageFormat(): HalfFormat {
    return this.format;
  }

  get weightShape(): [number, number] {
    return [this.outFeatures, this.inFeatures];
  }

  /**
   * A layer holding `linear`'s weight rounded to `format` (round to nearest even) and a copy of its
   * bias; `linear` is left as it was. Reads the weight back to the host.
   */
  static fromLinear(linear: Linear, options: HalfStorageOptions = {}): HalfLinear {
    const out = new HalfLinear(linear.inFeatures, linear.outFeatures, { ...options, bias: linear.bias !== null });
    out.setWeight(linear.weight);
    if (linear.bias && out.bias) out.bias.assign(linear.bias);
    return out;
  }

  /** Stores codes (row-major `[out, in]`, as a safetensors BF16 / F16 tensor's data) in place. */
  setCodes(codes: Uint16Array): void {
    const words = packHalfCodes(codes, this.outFeatures, this.inFeatures, this.packing);
    tf.tidy(() => this.weight.assign(tf.tensor2d(words, this.weight.shape as [number, number], 'int32')));
  }

  decodeWeight(): tf.Tensor2D {
    return decodeHalfWords(this.weight, this.inFeatures, this.format, this.packing);
  }

  setWeight(w: tf.Tensor): void {
    if (w.rank !== 2 || w.shape[0] !== this.outFeatures || w.shape[1] !== this.inFeatures)
      throw new Error(
        `HalfLinear.setWeight: expected [${this.outFeatures}, ${this.inFeatures}], got [${w.shape.join(', ')}]`,
      );
    const words = packHalfTensor(w as tf.Tensor2D, this.format, this.packing);
    this.weight.assign(words);
    words.dispose();
  }

  roundToStorage(t: tf.Tensor): tf.Tensor {
    return roundVia(t, this.format, this.packing);
  }

  override forward(x: tf.Tensor): tf.Tensor {
    const inF = this.inFeatures;
    const outF = this.outFeatures;
    if (x.shape.at(-1) !== inF)
      throw new Error(
        `HalfLinear: input's last dimension is ${x.shape.at(-1)} but the weight expects ${inF} ([${outF}, ${inF}], ${this.format})`,
      );
    // decoded inside the op and again for the input's gradient: the tape keeps no float32 weight
    const product = tf.customGrad(((xin: tf.Tensor) => {
      const y = tf.tidy(() => tf.matMul(tf.reshape(xin, [-1, inF]), this.decodeWeight(), false, true));
      return {
        value: tf.reshape(y, [...xin.shape.slice(0, -1), outF]),
        gradFunc: (dy: tf.Tensor) =>
          tf.tidy(() => tf.reshape(tf.matMul(tf.reshape(dy, [-1, outF]), this.decodeWeight()), xin.shape)),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return tf.tidy(() => {
      const y = product(x) as tf.Tensor;
      return this.bias ? tf.add(y, this.bias) : y;
    });
  }
}

/**
 * An Embedding whose frozen table `[num, dim]` stays in its checkpoint's 16-bit encoding: a lookup
 * gathers the rows of codes it needs and decodes only those. See {@link HalfLinear}.
 *
 * @example
 * ```ts
 * const emb = HalfEmbedding.fromEmbedding(embedding, { format: 'bf16' });
 * const h = emb.call(ids); // [..., dim] float32
 * ```
 */
export class HalfEmbedding extends Embedding implements StoredWeightLayer {
  readonly format: HalfFormat;
  readonly packing: HalfPacking;

  constructor(numEmbeddings: number, embeddingDim: number, options: HalfStorageOptions = {}) {
    const format = checkFormat(options.format ?? 'bf16', 'HalfEmbedding');
    const packing = checkPacking(options.packing ?? defaultHalfPacking(), 'HalfEmbedding');
    skipInitScope(1);
    try {
      super(numEmbeddings, embeddingDim);
    } finally {
      skipInitScope(-1);
    }
    this.format = format;
    this.packing = packing;
    this.setParameter('weight', makeParameter(zeroWords(numEmbeddings, embeddingDim, packing), false));
  }

  get storageFormat(): HalfFormat {
    return this.format;
  }

  get weightShape(): [number, number] {
    return [this.numEmbeddings, this.embeddingDim];
  }

  /** A table holding `embedding`'s rounded to `format`; `embedding` is left as it was. */
  static fromEmbedding(embedding: Embedding, options: HalfStorageOptions = {}): HalfEmbedding {
    if (embedding.paddingIdx !== null)
      throw new Error('HalfEmbedding.fromEmbedding: an embedding with paddingIdx is not supported; keep it float32');
    const out = new HalfEmbedding(embedding.numEmbeddings, embedding.embeddingDim, options);
    out.setWeight(embedding.weight);
    return out;
  }

  /** Stores codes (row-major `[num, dim]`) in place. */
  setCodes(codes: Uint16Array): void {
    const words = packHalfCodes(codes, this.numEmbeddings, this.embeddingDim, this.packing);
    tf.tidy(() => this.weight.assign(tf.tensor2d(words, this.weight.shape as [number, number], 'int32')));
  }

  decodeWeight(): tf.Tensor2D {
    return decodeHalfWords(this.weight, this.embeddingDim, this.format, this.packing);
  }

  setWeight(w: tf.Tensor): void {
    if (w.rank !== 2 || w.shape[0] !== this.numEmbeddings || w.shape[1] !== this.embeddingDim)
      throw new Error(
        `HalfEmbedding.setWeight: expected [${this.numEmbeddings}, ${this.embeddingDim}], got [${w.shape.join(', ')}]`,
      );
    const words = packHalfTensor(w as tf.Tensor2D, this.format, this.packing);
    this.weight.assign(words);
    words.dispose();
  }

  roundToStorage(t: tf.Tensor): tf.Tensor {
    return roundVia(t, this.format, this.packing);
  }

  override forward(ids: tf.Tensor): tf.Tensor {
    if (ids.dtype !== 'int32') throw new Error(`HalfEmbedding: ids must be int32, got ${ids.dtype}`);
    return tf.tidy(() => {
      const rows = tf.gather(this.weight, tf.reshape(ids, [-1]));
      const values = decodeHalfWords(rows, this.embeddingDim, this.format, this.packing);
      return tf.reshape(values, [...ids.shape, this.embeddingDim]);
    });
  }
}
