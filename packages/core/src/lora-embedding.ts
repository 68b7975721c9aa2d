import * as tf from '@tensorflow/tfjs-core';
import { type Embedding, ParameterDict, embedding, normalInit } from '@lora/nn';
import { loraScaling } from './lora-config';
import { LoraLayerBase } from './lora-layer';
import type { AdapterSettings } from './lora-linear';

/**
 * An Embedding wrapped with LoRA adapters, as PEFT's `lora.Embedding`: `lora_embedding_A[adapter]`
 * [r, vocab] and `lora_embedding_B[adapter]` [dim, r] (parameters, no `.weight`), and
 * `y = base(ids) + s·(Aᵀ[ids]·Bᵀ)`. No dropout on this path (as PEFT). ΔW = s·(B·A)ᵀ, [vocab, dim].
 *
 * @example
 * ```ts
 * const layer = new LoraEmbedding(new Embedding(32000, 512), 'default', settings);
 * ```
 */
export class LoraEmbedding extends LoraLayerBase<Embedding> {
  baseLayer: Embedding;
  loraEmbeddingA: ParameterDict;
  loraEmbeddingB: ParameterDict;

  constructor(base: Embedding, adapterName: string, settings: AdapterSettings) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraEmbeddingA = this.registerModule('lora_embedding_A', new ParameterDict());
    this.loraEmbeddingB = this.registerModule('lora_embedding_B', new ParameterDict());
    this.updateLayer(adapterName, settings);
    this.activeAdapters = [adapterName];
  }

  /**
   * Adds an adapter. PEFT draws A ~ N(0, 1) then B ~ N(0, 1) at construction; the default init then
   * zeroes A and redraws B, so after the same seed the weights equal PEFT's.
   */
  updateLayer(name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0) throw new Error(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.loraBias) throw new Error('lora_bias=True is not supported for Embedding.');
    if (s.useDora) throw new Error('DoRA on Embedding layers is not implemented in @lora/core yet');
    if (this.settings.has(name)) this.deleteAdapter(name);
    const vocab = this.baseLayer.numEmbeddings;
    const dim = this.baseLayer.embeddingDim;
    let a = normalInit([s.r, vocab]);
    let b = normalInit([dim, s.r]);
    if (s.initLoraWeights !== false) {
      // true and every other init: A ← 0, B ← N(0, 1) (PEFT treats the others as true on embeddings)
      a.dispose();
      a = tf.zeros([s.r, vocab]);
      b.dispose();
      b = normalInit([dim, s.r]);
    }
    this.loraEmbeddingA.set(name, a);
    this.loraEmbeddingB.set(name, b);
    this.settings.set(name, { ...s });
    this.scaling.set(name, loraScaling(s.loraAlpha, s.r, s.useRslora));
  }

  protected removeAdapterWeights(name: string): void {
    this.loraEmbeddingA.delete(name);
    this.loraEmbeddingB.delete(name);
  }

  /** No dropout on this path, as PEFT. */
  protected addAdapterOutput(result: tf.Tensor, ids: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor {
    const afterA = embedding(ids, tf.transpose(this.loraEmbeddingA.get(name)));
    const lora = tf.matMul(tf.reshape(afterA, [-1, afterA.shape.at(-1) as number]), this.loraEmbeddingB.get(name), false, true);
    const contribution = tf.mul(tf.reshape(lora, result.shape), this.scaling.get(name) as number);
    return tf.add(result, rows ? tf.mul(contribution, rows) : contribution);
  }

  /** ΔW = s·(B·A)ᵀ, shaped like the embedding table [vocab, dim]. The caller owns it. */
  getDeltaWeight(name: string): tf.Tensor2D {
    if (!this.settings.has(name)) throw new Error(`adapter '${name}' is not on this layer`);
    return tf.tidy(() => tf.transpose(tf.mul(tf.matMul(this.loraEmbeddingB.get(name), this.loraEmbeddingA.get(name)), this.scaling.get(name) as number)) as tf.Tensor2D);
  }

  /** A of an adapter ([r, vocab]). */
  factorA(name: string): tf.Variable {
    return this.loraEmbeddingA.get(name);
  }

  /** B of an adapter ([dim, r]). */
  factorB(name: string): tf.Variable {
    return this.loraEmbeddingB.get(name);
  }

  /** The adapter's tensors by the key suffix PEFT saves them under. */
  savedTensors(name: string): Record<string, tf.Variable> {
    return { lora_embedding_A: this.loraEmbeddingA.get(name), lora_embedding_B: this.loraEmbeddingB.get(name) };
  }
}
