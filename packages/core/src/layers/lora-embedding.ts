import { LoraConfigError } from '../errors';
import * as tf from '@tensorflow/tfjs-core';
import { type Embedding, ModuleDict, ParameterDict, embedding, normalInit } from '@lora/nn';
import { Magnitude, detach, normExcept } from '../variants/dora';
import { LoraLayerBase } from './lora-layer';
import type { AdapterSettings } from './lora-linear';

/**
 * An Embedding wrapped with LoRA adapters, as PEFT's `lora.Embedding`: `lora_embedding_A[adapter]`
 * [r, vocab] and `lora_embedding_B[adapter]` [dim, r] (parameters, no `.weight`), and
 * `y = base(ids) + s·(Aᵀ[ids]·Bᵀ)`. No dropout on this path (as PEFT). ΔW = s·(B·A)ᵀ, [vocab, dim].
 * With `useDora`, a magnitude [dim] rescales each embedding dimension by m / ‖W + ΔW‖ (the norm
 * over the vocabulary), base output included: `y = f·(base(ids) + s·Aᵀ[ids]·Bᵀ)`, as PEFT's
 * `DoraEmbeddingLayer`.
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
  loraMagnitudeVector: ModuleDict<Magnitude>;

  constructor(base: Embedding, adapterName: string, settings: AdapterSettings) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraEmbeddingA = this.registerModule('lora_embedding_A', new ParameterDict());
    this.loraEmbeddingB = this.registerModule('lora_embedding_B', new ParameterDict());
    this.loraMagnitudeVector = this.registerModule('lora_magnitude_vector', new ModuleDict<Magnitude>());
    this.updateLayer(adapterName, settings);
    this.activeAdapters = [adapterName];
  }

  /**
   * Adds an adapter. PEFT draws A ~ N(0, 1) then B ~ N(0, 1) at construction; the default init then
   * zeroes A and redraws B, so after the same seed the weights equal PEFT's. A DoRA magnitude starts
   * as ‖W + ΔW‖ per embedding dimension.
   */
  updateLayer(name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0)
      throw new LoraConfigError(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.loraBias) throw new LoraConfigError('lora_bias=True is not supported for Embedding.');
    if (s.initLoraWeights === 'loftq') {
      throw new LoraConfigError(
        "init_lora_weights='loftq' is not supported on Embedding layers (PEFT 0.21 fails there too: LoraLayer.loftq_init() missing 1 required positional argument: 'config'); leave this layer out of target_modules",
      );
    }
    if (this.settings.has(name)) this.deleteAdapter(name);
    const vocab = this.baseLayer.numEmbeddings;
    const dim = this.baseLayer.embeddingDim;
    let a = normalInit([s.r, vocab]);
    let b = normalInit([dim, s.r]);
    if (s.initLoraWeights !== false) {
      // true and every other init: A ← 0, B ← N(0, 1) (PEFT treats the others as true on embeddings; loftq fails above)
      a.dispose();
      a = tf.zeros([s.r, vocab]);
      b.dispose();
      b = normalInit([dim, s.r]);
    }
    this.loraEmbeddingA.set(name, a);
    this.loraEmbeddingB.set(name, b);
    this.storeSettings(name, s);
    if (s.useDora)
      this.loraMagnitudeVector.set(
        name,
        new Magnitude(tf.tidy(() => tf.reshape(this.doraNorm(name), [this.baseLayer.embeddingDim]))),
      );
  }

  /** ‖W + ΔW‖ per embedding dimension ([1, dim], over the vocabulary) for the current weights. */
  private doraNorm(name: string): tf.Tensor {
    return tf.tidy(() => this.doraWeightNorm(name, tf.add(this.baseLayer.weight, this.getDeltaWeight(name))));
  }

  protected removeAdapterWeights(name: string): void {
    this.loraEmbeddingA.delete(name);
    this.loraEmbeddingB.delete(name);
    this.loraMagnitudeVector.delete(name)?.dispose();
  }

  /** No dropout on this path, as PEFT. */
  protected addAdapterOutput(result: tf.Tensor, ids: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor {
    const afterA = embedding(ids, tf.transpose(this.loraEmbeddingA.get(name)));
    const lora = tf.matMul(
      tf.reshape(afterA, [-1, afterA.shape.at(-1) as number]),
      this.loraEmbeddingB.get(name),
      false,
      true,
    );
    const contribution = tf.mul(tf.reshape(lora, result.shape), this.scaling.get(name) as number);
    if (!this.settings.get(name)?.useDora) return tf.add(result, rows ? tf.mul(contribution, rows) : contribution);
    // DoRA (PEFT's DoraEmbeddingLayer): f = m / ‖W + ΔW‖ per dimension, the norm detached, scales
    // the running result as well as the adapter's part
    const m = this.loraMagnitudeVector.get(name).weight;
    const f = tf.div(m, tf.reshape(detach(this.doraNorm(name)), m.shape));
    return tf.add(tf.mul(f, result), tf.mul(f, contribution));
  }

  /** One norm per embedding dimension, over the vocabulary: [1, dim]. */
  protected override doraWeightNorm(_name: string, weight: tf.Tensor): tf.Tensor {
    return normExcept(weight, 1);
  }

  protected override doraMagnitude(name: string): tf.Tensor {
    return tf.reshape(this.loraMagnitudeVector.get(name).weight, [1, -1]);
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

  /** The adapter's tensors by the key suffix PEFT saves them under (DoRA's magnitude without `.weight`). */
  savedTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {
      lora_embedding_A: this.loraEmbeddingA.get(name),
      lora_embedding_B: this.loraEmbeddingB.get(name),
    };
    if (this.loraMagnitudeVector.has(name)) out.lora_magnitude_vector = this.loraMagnitudeVector.get(name).weight;
    return out;
  }
}
