import * as tf from '@tensorflow/tfjs-core';
import { type Embedding, type Module, ParameterDict, embedding, normalInit } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import { PEFT_SUFFIX } from '../files/peft-keys';
import type { AdapterSettings } from './adapter-settings';
import { Identity, LoraLayerBase } from './lora-layer';
import { LoraConfigError } from '../errors';

/** Embeddings have no dropout on the LoRA path (as PEFT): every adapter's `dropout` is this. */
const NO_DROPOUT = new Identity();

/**
 * An Embedding wrapped with LoRA adapters, as PEFT's `lora.Embedding`: `lora_embedding_A[adapter]`
 * [r, vocab] and `lora_embedding_B[adapter]` [dim, r] (parameters, no `.weight`), and
 * `y = base(ids) + s·(Aᵀ[ids]·Bᵀ)`. No dropout on this path (as PEFT). ΔW = s·(B·A)ᵀ, [vocab, dim].
 * With `useDora`, the DoRA variant rescales each embedding dimension (see `variants/dora.ts`).
 *
 * @example
 * ```ts
 * const layer = new LoraEmbedding(new Embedding(32000, 512), 'default', settings);
 * ```
 */
export class LoraEmbedding extends LoraLayerBase<Embedding> {
  readonly kind = 'embedding' as const;
  baseLayer: Embedding;
  loraEmbeddingA: ParameterDict;
  loraEmbeddingB: ParameterDict;

  constructor(base: Embedding, adapterName: string, settings: AdapterSettings, config?: LoraConfig) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraEmbeddingA = this.registerModule('lora_embedding_A', new ParameterDict());
    this.loraEmbeddingB = this.registerModule('lora_embedding_B', new ParameterDict());
    this.registerVariantModules();
    this.updateLayer(adapterName, settings, config);
    this.activeAdapters = [adapterName];
  }

  protected checkSettings(_name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0)
      throw new LoraConfigError(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.loraBias) throw new LoraConfigError('lora_bias=True is not supported for Embedding.');
  }

  /**
   * PEFT draws A ~ N(0, 1) then B ~ N(0, 1) at construction; the default init then zeroes A and
   * redraws B, so after the same seed the weights equal PEFT's.
   */
  protected createAdapterWeights(name: string, s: AdapterSettings): void {
    this.loraEmbeddingA.set(name, normalInit([s.r, this.baseLayer.numEmbeddings]));
    this.loraEmbeddingB.set(name, normalInit([this.baseLayer.embeddingDim, s.r]));
  }

  protected removeAdapterWeights(name: string): void {
    if (this.loraEmbeddingA.has(name)) this.loraEmbeddingA.delete(name);
    if (this.loraEmbeddingB.has(name)) this.loraEmbeddingB.delete(name);
  }

  dropout(_name: string): Module {
    return NO_DROPOUT;
  }

  /** Aᵀ[ids]·Bᵀ, unscaled: [...ids.shape, dim]. */
  lowRankForward(name: string, ids: tf.Tensor): tf.Tensor {
    const afterA = embedding(ids, tf.transpose(this.loraEmbeddingA.get(name)));
    const r = afterA.shape.at(-1) as number;
    const lora = tf.matMul(tf.reshape(afterA, [-1, r]), this.loraEmbeddingB.get(name), false, true);
    return tf.reshape(lora, [...ids.shape, this.baseLayer.embeddingDim]);
  }

  /** ΔW = s·(B·A)ᵀ, shaped like the embedding table [vocab, dim]. The caller owns it. */
  getDeltaWeight(name: string): tf.Tensor2D {
    if (!this.settings.has(name)) throw new Error(`adapter '${name}' is not on this layer`);
    return tf.tidy(
      () =>
        tf.transpose(
          tf.mul(
            tf.matMul(this.loraEmbeddingB.get(name), this.loraEmbeddingA.get(name)),
            this.scaling.get(name) as number,
          ),
        ) as tf.Tensor2D,
    );
  }

  /** A of an adapter ([r, vocab]). */
  factorA(name: string): tf.Variable {
    return this.loraEmbeddingA.get(name);
  }

  /** B of an adapter ([dim, r]). */
  factorB(name: string): tf.Variable {
    return this.loraEmbeddingB.get(name);
  }

  protected ownTensors(name: string): Record<string, tf.Variable> {
    return {
      [PEFT_SUFFIX.embeddingA]: this.loraEmbeddingA.get(name),
      [PEFT_SUFFIX.embeddingB]: this.loraEmbeddingB.get(name),
    };
  }
}
