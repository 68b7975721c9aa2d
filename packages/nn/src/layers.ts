import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { defaultRng, kaimingUniformDefault, normalInit, uniformInit } from './init';
import { preferTransposeFlags, rmsNorm } from '@lora/kernels';
import { Module, type Parameter } from './module';
import { matmul } from './ops';

function checkPositiveInt(value: number, what: string, layer: string): void {
  if (!Number.isInteger(value) || value <= 0)
    throw new Error(`${layer}: ${what} must be a positive integer, got ${value}`);
}

/**
 * `y = x·Wᵀ + b` with PyTorch's layout (weight `[out, in]`) and initialisation. Accepts inputs of
 * any rank `[..., in]`.
 *
 * @example
 * ```ts
 * const lin = new Linear(768, 3072);
 * const y = lin.call(x); // x: [batch, seq, 768] → [batch, seq, 3072]
 * ```
 */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  weight: Parameter;
  bias: Parameter | null;

  constructor(inFeatures: number, outFeatures: number, options: { bias?: boolean } = {}) {
    super();
    checkPositiveInt(inFeatures, 'inFeatures', 'Linear');
    checkPositiveInt(outFeatures, 'outFeatures', 'Linear');
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    this.weight = this.registerParameter('weight', kaimingUniformDefault([outFeatures, inFeatures], inFeatures));
    this.bias = this.registerParameter(
      'bias',
      options.bias === false ? null : uniformInit([outFeatures], 1 / Math.sqrt(inFeatures)),
    );
  }

  forward(x: tf.Tensor): tf.Tensor {
    return linear(x, this.weight, this.bias);
  }
}

/**
 * `x·Wᵀ + b` for x of any rank `[..., in]` and W `[out, in]` (PyTorch's `F.linear`).
 */
export function linear(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | null = null): tf.Tensor {
  const inF = weight.shape[1] as number;
  if (x.shape.at(-1) !== inF) {
    throw new Error(
      `linear: input's last dimension is ${x.shape.at(-1)} but the weight expects ${inF} (weight shape [${weight.shape.join(', ')}])`,
    );
  }
  // An explicit transpose instead of matMul's transposeB flag: the flag is ~13× slower on wasm. On
  // webgpu the flag costs nothing (no Transpose dispatch) and tfjs's own gradient leaves a frozen
  // weight's gradient uncomputed.
  if (preferTransposeFlags())
    return tf.tidy(() => {
      const x2 = x.rank === 2 ? x : tf.reshape(x, [-1, inF]);
      let y = tf.matMul(x2, weight, false, true);
      if (bias) y = tf.add(y, bias);
      return x.rank === 2 ? y : tf.reshape(y, [...x.shape.slice(0, -1), weight.shape[0] as number]);
    });
  return tf.tidy(() => affine(x, tf.transpose(weight), bias));
}

/** `x·W + b` for x `[..., in]` and W `[in, out]`, through 2-d products (the shapes checked by the caller). */
export function affine(x: tf.Tensor, weightInOut: tf.Tensor, bias: tf.Tensor | null): tf.Tensor {
  return tf.tidy(() => {
    const [inF, outF] = weightInOut.shape as [number, number];
    const x2 = x.rank === 2 ? x : tf.reshape(x, [-1, inF]);
    let y = matmul(x2, weightInOut);
    if (bias) y = tf.add(y, bias);
    return x.rank === 2 ? y : tf.reshape(y, [...x.shape.slice(0, -1), outF]);
  });
}

/**
 * A lookup table (PyTorch's `nn.Embedding`): weight `[numEmbeddings, embeddingDim]`, initialised
 * N(0, 1), with the `paddingIdx` row zeroed.
 *
 * @example
 * ```ts
 * const emb = new Embedding(32000, 512);
 * const h = emb.call(tf.tensor2d([[1, 5, 9]], [1, 3], 'int32')); // [1, 3, 512]
 * ```
 */
export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  readonly paddingIdx: number | null;
  weight: Parameter;

  constructor(numEmbeddings: number, embeddingDim: number, options: { paddingIdx?: number } = {}) {
    super();
    checkPositiveInt(numEmbeddings, 'numEmbeddings', 'Embedding');
    checkPositiveInt(embeddingDim, 'embeddingDim', 'Embedding');
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    let pad = options.paddingIdx ?? null;
    if (pad !== null) {
      if (pad < 0) pad += numEmbeddings;
      if (!Number.isInteger(pad) || pad < 0 || pad >= numEmbeddings)
        throw new Error(`Embedding: paddingIdx ${options.paddingIdx} must be within num_embeddings (${numEmbeddings})`);
    }
    this.paddingIdx = pad;
    let w = normalInit([numEmbeddings, embeddingDim]);
    if (pad !== null) {
      const keep = tf.tidy(() =>
        tf.sub(1, tf.reshape(tf.oneHot(tf.tensor1d([pad as number], 'int32'), numEmbeddings), [numEmbeddings, 1])),
      );
      const zeroed = tf.mul(w, keep);
      tf.dispose([w, keep]);
      w = zeroed;
    }
    this.weight = this.registerParameter('weight', w);
  }

  forward(ids: tf.Tensor): tf.Tensor {
    return embedding(ids, this.weight);
  }
}

/**
 * Looks rows up: `weight[ids]` for integer ids of any shape (PyTorch's `F.embedding`).
 * The gradient scatters into the table with ScatterNd (summing repeated ids): tfjs's own gather
 * gradient needs UnsortedSegmentSum, which the wasm backend does not have.
 */
export function embedding(ids: tf.Tensor, weight: tf.Tensor): tf.Tensor {
  if (ids.dtype !== 'int32') throw new Error(`embedding: ids must be int32, got ${ids.dtype}`);
  const [vocab, dim] = weight.shape as [number, number];
  const lookup = tf.customGrad(((w: tf.Tensor, save: tf.GradSaveFunc) => {
    const flat = tf.reshape(ids, [-1, 1]);
    save([flat]); // kept by the engine until the gradient has run
    return {
      value: tf.reshape(tf.gather(w, tf.reshape(flat, [-1])), [...ids.shape, dim]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.scatterND(saved[0] as tf.Tensor, tf.reshape(dy, [-1, dim]), [vocab, dim]),
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return lookup(weight);
}

/**
 * Layer normalisation over the last dimension(s) (PyTorch's `nn.LayerNorm`): biased variance, eps
 * inside the square root, weight 1 and bias 0 at init.
 *
 * @example
 * ```ts
 * const ln = new LayerNorm(512);
 * ```
 */
export class LayerNorm extends Module {
  readonly normalizedShape: number[];
  readonly eps: number;
  weight: Parameter | null;
  bias: Parameter | null;

  constructor(
    normalizedShape: number | number[],
    options: { eps?: number; elementwiseAffine?: boolean; bias?: boolean } = {},
  ) {
    super();
    this.normalizedShape = typeof normalizedShape === 'number' ? [normalizedShape] : normalizedShape;
    this.eps = options.eps ?? 1e-5;
    const affine = options.elementwiseAffine ?? true;
    this.weight = this.registerParameter('weight', affine ? tf.ones(this.normalizedShape) : null);
    this.bias = this.registerParameter(
      'bias',
      affine && options.bias !== false ? tf.zeros(this.normalizedShape) : null,
    );
  }

  forward(x: tf.Tensor): tf.Tensor {
    const k = this.normalizedShape.length;
    if (x.shape.slice(-k).join(',') !== this.normalizedShape.join(',')) {
      throw new Error(
        `LayerNorm: input shape [${x.shape.join(', ')}] does not end with normalized_shape [${this.normalizedShape.join(', ')}]`,
      );
    }
    return tf.tidy(() => {
      const axes = Array.from({ length: k }, (_, i) => x.rank - k + i);
      const mean = tf.mean(x, axes, true);
      const centred = tf.sub(x, mean);
      const variance = tf.mean(tf.square(centred), axes, true);
      let y = tf.mul(centred, tf.rsqrt(tf.add(variance, this.eps)));
      if (this.weight) y = tf.mul(y, this.weight);
      if (this.bias) y = tf.add(y, this.bias);
      return y;
    });
  }
}

/**
 * Root-mean-square normalisation over the last dimension, as Hugging Face's `LlamaRMSNorm` (and
 * `torch.nn.RMSNorm`): `x / √(mean(x²) + eps) · weight`, weight 1 at init.
 *
 * @example
 * ```ts
 * const norm = new RMSNorm(2048, { eps: 1e-5 });
 * ```
 */
export class RMSNorm extends Module {
  readonly eps: number;
  weight: Parameter;

  constructor(dim: number, options: { eps?: number } = {}) {
    super();
    checkPositiveInt(dim, 'dim', 'RMSNorm');
    this.eps = options.eps ?? 1e-6;
    this.weight = this.registerParameter('weight', tf.ones([dim]));
  }

  forward(x: tf.Tensor): tf.Tensor {
    // @lora/kernels: one fused dispatch on webgpu, the same composite of tf ops elsewhere
    return rmsNorm(x, this.weight, this.eps);
  }
}

/**
 * Dropout (PyTorch's `nn.Dropout`): in training mode, zeroes each element with probability `p` and
 * scales the rest by 1/(1−p); identity in eval mode. Masks come from a seeded generator, so runs
 * are reproducible (they are not torch's masks).
 *
 * @example
 * ```ts
 * const drop = new Dropout(0.1, { seed: 0 });
 * ```
 */
export class Dropout extends Module {
  readonly p: number;
  private readonly own: Generator | null;

  constructor(p = 0.5, options: { seed?: number } = {}) {
    super();
    if (!(p >= 0 && p <= 1)) throw new Error(`dropout probability has to be between 0 and 1, but got ${p}`);
    this.p = p;
    this.own = options.seed === undefined ? null : new Generator(options.seed);
  }

  private get rng(): Generator {
    return this.own ?? defaultRng();
  }

  forward(x: tf.Tensor): tf.Tensor {
    if (!this.training || this.p === 0) return tf.clone(x);
    if (this.p === 1) return tf.zerosLike(x);
    const u = this.rng.fillUniform(new Float32Array(x.size));
    const keep = 1 / (1 - this.p);
    const mask = u.map((v) => (v >= this.p ? keep : 0));
    return tf.tidy(() => tf.mul(x, tf.tensor(mask, x.shape, 'float32')));
  }
}

/** SiLU / swish, `x·σ(x)` (PyTorch's `nn.SiLU`). */
export class SiLU extends Module {
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.mul(x, tf.sigmoid(x)));
  }
}

/**
 * GELU (PyTorch's `nn.GELU`): exact with the error function (default), or the tanh approximation
 * with `approximate: 'tanh'` (Hugging Face's `gelu_new` / `gelu_pytorch_tanh`).
 */
export class GELU extends Module {
  readonly approximate: 'none' | 'tanh';

  constructor(options: { approximate?: 'none' | 'tanh' } = {}) {
    super();
    this.approximate = options.approximate ?? 'none';
  }

  forward(x: tf.Tensor): tf.Tensor {
    return gelu(x, this.approximate);
  }
}

/** GELU as a function. */
export function gelu(x: tf.Tensor, approximate: 'none' | 'tanh' = 'none'): tf.Tensor {
  return tf.tidy(() => {
    if (approximate === 'tanh') {
      const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
      return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
    }
    return tf.mul(tf.mul(0.5, x), tf.add(1, tf.erf(tf.div(x, Math.SQRT2))));
  });
}
