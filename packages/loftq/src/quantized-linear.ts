import * as tf from '@tensorflow/tfjs-core';
import { Linear, makeParameter, withoutInit } from '@lora/nn';
import { QuantizationError } from './errors';
import type { Int8Quantized } from './int8';
import { type Nf4Quantized, nf4Codes } from './nf4';
import { type NfQuantized, nfCodes } from './normal-float';
import {
  FORMAT_BITS,
  type PackedLayout,
  type QuantizedFormat,
  decodePacked,
  formatOfBits,
  packWords,
  packedSizes,
  quantizePacked,
} from './packed-weight';
import { checkBlockSize } from './weight-input';

/** Options of {@link QuantizedLinear.fromLinear}. */
export interface QuantizedLinearOptions {
  /** 4 (bitsandbytes' NF4, the default), 3 or 2 (the LoftQ authors' normal float), 8 (int8). */
  bits?: 2 | 3 | 4 | 8;
  /** Values per absmax block for 2, 3 and 4 bits (default 64); int8 scales each row. */
  blockSize?: number;
  /**
   * Whether merging an adapter into this layer quantizes the merged weight again (default true, as
   * PEFT's bitsandbytes layers do: the layer stays small, the merge is lossy). With false the merged
   * weight is kept in float32 in the layer (4× or 8× its packed size), and unmerging is exact.
   */
  requantizeOnMerge?: boolean;
}

/** What a {@link QuantizedLinear} is built from: its packed words and scales (taken over), bias (copied), format. */
interface PackedInit {
  shape: [number, number];
  bias: tf.Tensor | null;
  words: tf.Tensor;
  scales: tf.Tensor1D;
  format: QuantizedFormat;
  blockSize: number;
  requantizeOnMerge: boolean;
}

/**
 * A Linear whose weight is stored quantized (QLoRA's base layer, bitsandbytes' `Linear4bit` /
 * `Linear8bitLt` without bitsandbytes): the codes packed in 24-bit words on the backend with a float32
 * scale per block (NF4, 3- and 2-bit normal float) or per row (int8), decoded inside the forward and
 * never kept: the forward and the backward pass each decode it again, so no float32 copy of the
 * weight lives between calls, and it never gets a gradient (its `weight` parameter, the packed words,
 * is frozen). `getPeftModel` wraps it with LoRA once `@lora/loftq` is imported. Build it with
 * {@link quantizeModel}, {@link QuantizedLinear.fromLinear} or {@link QuantizedLinear.fromQuantized}.
 *
 * Each 32-bit word carries 24 bits of codes (6 at 4 bits, 8 at 3, 12 at 2, 3 at 8), plus a float32
 * scale per block of 64 (per row for int8): a weight takes 5.83 bits at 4 bits (18% of float32), 4.5
 * at 3 (14%), 3.17 at 2 (10%) and 10.7 at 8 (33%). Exact packing on every backend costs the step
 * from 4, 3, 2 and 8 bits to these.
 *
 * @example
 * ```ts
 * const q = QuantizedLinear.fromLinear(linear, { bits: 4 });  // linear is left as it was
 * const y = q.call(x);                                         // as linear(x) with the NF4 weight
 * console.log(q.bytes, q.format);                              // bytes held, 'nf4'
 * ```
 */
export class QuantizedLinear extends Linear {
  /** How the weight is stored now: a quantized format, or `'float32'` after a merge that did not requantize. */
  format: QuantizedFormat | 'float32';
  /** The format to quantize to again (what the layer was made with). */
  readonly quantizedFormat: QuantizedFormat;
  readonly blockSize: number;
  requantizeOnMerge: boolean;
  /** The scales: absmax per block (per row for int8); null while the weight is float32. */
  absmax: tf.Tensor1D | null;

  private constructor(init: PackedInit) {
    // Linear allocates a weight (zeros here) that the packed words replace at once
    super(init.shape[1], init.shape[0], { bias: init.bias !== null });
    this.setParameter('weight', makeParameter(init.words, false));
    if (init.bias && this.bias) {
      this.bias.assign(init.bias);
      this.bias.trainable = false;
    }
    this.format = init.format;
    this.quantizedFormat = init.format;
    this.blockSize = init.format === 'int8' ? init.shape[1] : init.blockSize;
    this.requantizeOnMerge = init.requantizeOnMerge;
    this.absmax = this.registerBuffer('absmax', init.scales) as tf.Tensor1D; // the buffer is `scales` itself
  }

  /** A layer from packed words and scales it takes over (built without drawing initial weights). */
  private static build(init: PackedInit): QuantizedLinear {
    return withoutInit(() => new QuantizedLinear(init));
  }

  /** The packed layout of this layer's quantized format. */
  get layout(): PackedLayout {
    return { format: this.quantizedFormat, shape: [this.outFeatures, this.inFeatures], blockSize: this.blockSize };
  }

  /**
   * Quantizes a Linear's weight on the backend (see {@link quantizePacked}) into a new layer; the Linear
   * is left as it was (its bias is copied). A block size that does not divide the weight is an error at
   * 2 and 3 bits (the normal-float quantizer's rule); NF4 allows a shorter last block.
   *
   * @example
   * ```ts
   * const q = QuantizedLinear.fromLinear(model.lm_head as Linear, { bits: 8 });
   * ```
   */
  static fromLinear(linear: Linear, options: QuantizedLinearOptions = {}): QuantizedLinear {
    const { format, blockSize } = checkLayerOptions(linear, options, 'QuantizedLinear.fromLinear');
    const layout: PackedLayout = {
      format,
      shape: [linear.outFeatures, linear.inFeatures],
      blockSize: format === 'int8' ? linear.inFeatures : blockSize,
    };
    const { words, scales } = quantizePacked(linear.weight as tf.Tensor2D, layout);
    return QuantizedLinear.build({
      shape: layout.shape,
      bias: linear.bias,
      words,
      scales,
      format,
      blockSize,
      requantizeOnMerge: options.requantizeOnMerge ?? true,
    });
  }

  /**
   * A layer holding a weight quantized on the host ({@link nf4Quantize}, {@link nfQuantize} at 2, 3 or 4
   * bits, {@link int8Quantize}), exactly those codes and scales, with an optional bias `[out]`.
   *
   * @example
   * ```ts
   * const q = QuantizedLinear.fromQuantized(nf4Quantize(weight), bias);
   * ```
   */
  static fromQuantized(
    q: Nf4Quantized | NfQuantized | Int8Quantized,
    bias: tf.Tensor | null = null,
    options: Pick<QuantizedLinearOptions, 'requantizeOnMerge'> = {},
  ): QuantizedLinear {
    if (q?.shape?.length !== 2)
      throw new QuantizationError(
        'q',
        `QuantizedLinear.fromQuantized: a Linear's weight is 2-D ([out, in]); got shape [${q?.shape?.join(', ')}]`,
      );
    const shape = q.shape as [number, number];
    if (bias && (bias.rank !== 1 || bias.shape[0] !== shape[0]))
      throw new QuantizationError(
        'bias',
        `QuantizedLinear.fromQuantized: the bias must be [${shape[0]}], got [${bias.shape.join(', ')}]`,
      );
    let format: QuantizedFormat;
    let codes: Uint8Array;
    let blockSize: number;
    if (q.format === 'int8') {
      format = 'int8';
      blockSize = shape[1];
      codes = Uint8Array.from(q.values, (v) => v + 128);
    } else if (q.format === 'nf4') {
      format = 'nf4';
      blockSize = q.blockSize;
      codes = nf4Codes(q);
    } else {
      format = q.bits === 4 ? 'nf4' : q.bits === 3 ? 'nf3' : 'nf2';
      blockSize = q.blockSize;
      codes = nfCodes(q);
    }
    const layout: PackedLayout = { format, shape, blockSize };
    const { codes: total } = packedSizes(layout);
    const padded = new Uint8Array(total);
    padded.set(codes);
    const words = tf.tensor1d(packWords(padded, layout));
    const scales = tf.tensor1d(Float32Array.from(q.absmax));
    return QuantizedLinear.build({
      shape,
      bias,
      words,
      scales,
      format,
      blockSize,
      requantizeOnMerge: options.requantizeOnMerge ?? true,
    });
  }

  /** The weight as float32 `[out, in]`, decoded from the packed words (or a copy of the float32 weight). The caller owns it. */
  dequantize(): tf.Tensor2D {
    if (this.format === 'float32') return tf.clone(this.weight) as tf.Tensor2D;
    return decodePacked(this.weight as tf.Tensor1D, this.absmax as tf.Tensor1D, this.layout);
  }

  /**
   * Replaces the weight (after a merge): quantized again in the layer's format when `requantize` (by
   * default {@link requantizeOnMerge}), or kept as float32. The tensor is not taken over.
   */
  setWeight(w: tf.Tensor2D, requantize = this.requantizeOnMerge): void {
    if (w.shape[0] !== this.outFeatures || w.shape[1] !== this.inFeatures)
      throw new QuantizationError(
        'weight',
        `QuantizedLinear.setWeight: expected [${this.outFeatures}, ${this.inFeatures}], got [${w.shape.join(', ')}]`,
      );
    if (!requantize) {
      this.setParameter('weight', makeParameter(tf.clone(w), false));
      this.setBuffer('absmax', null);
      this.absmax = null;
      this.format = 'float32';
      return;
    }
    const { words, scales } = quantizePacked(w, this.layout);
    this.setParameter('weight', makeParameter(words, false));
    this.setBuffer('absmax', scales);
    this.absmax = scales;
    this.format = this.quantizedFormat;
  }

  /** Bytes this layer holds on the backend: packed words (or the float32 weight), scales and bias. */
  get bytes(): number {
    return 4 * (this.weight.size + (this.absmax?.size ?? 0) + (this.bias?.size ?? 0));
  }

  override forward(x: tf.Tensor): tf.Tensor {
    if (this.format === 'float32') return super.forward(x);
    const inF = this.inFeatures;
    const outF = this.outFeatures;
    if (x.shape.at(-1) !== inF)
      throw new Error(
        `QuantizedLinear: input's last dimension is ${x.shape.at(-1)} but the weight expects ${inF} ([${outF}, ${inF}], ${this.format})`,
      );
    // The weight is decoded inside the op, and again for the input's gradient: the tape keeps no float
    // copy of it between the forward and the backward pass (as bitsandbytes' MatMul4Bit)
    const product = tf.customGrad(((xin: tf.Tensor) => {
      const x2 = tf.reshape(xin, [-1, inF]);
      const y = tf.matMul(x2, tf.transpose(this.dequantize()));
      return {
        value: tf.reshape(y, [...xin.shape.slice(0, -1), outF]),
        gradFunc: (dy: tf.Tensor) =>
          tf.tidy(() => tf.reshape(tf.matMul(tf.reshape(dy, [-1, outF]), this.dequantize()), xin.shape)),
      };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return tf.tidy(() => {
      const y = product(x) as tf.Tensor;
      return this.bias ? tf.add(y, this.bias) : y;
    });
  }
}

/** Checks bits and block size for a Linear: the format and block size to use. */
export function checkLayerOptions(
  linear: Linear,
  options: QuantizedLinearOptions,
  fn: string,
): { format: QuantizedFormat; blockSize: number } {
  const format = formatOfBits(options.bits ?? 4, fn);
  const blockSize = checkBlockSize(options.blockSize ?? 64, fn);
  const n = linear.outFeatures * linear.inFeatures;
  if ((format === 'nf2' || format === 'nf3') && n % blockSize !== 0)
    throw new QuantizationError(
      'blockSize',
      `${fn}: at ${FORMAT_BITS[format]} bits the normal-float quantizer needs the block size (${blockSize}) to divide the weight's ${n} values ([${linear.outFeatures}, ${linear.inFeatures}]); choose a block size that divides it, or 4 bits`,
    );
  return { format, blockSize };
}
