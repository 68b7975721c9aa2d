import * as tf from '@tensorflow/tfjs-core';
import { Dropout, Module } from '@lora/nn';
import { allFinite } from '../all-finite';
import { loraScaling } from '../lora-config';
import type { AdapterSettings } from './lora-linear';

/** Identity (PEFT uses nn.Identity when lora_dropout is 0). */
export class Identity extends Module {
  forward(x: tf.Tensor): tf.Tensor {
    return x;
  }
}

/** An adapter's `lora_dropout` module: Dropout(p), or Identity when p is 0 (as PEFT). */
export function loraDropoutModule(p: number): Module {
  return p > 0 ? new Dropout(p) : new Identity();
}

interface BaseWithWeight extends Module {
  weight: tf.Variable;
  bias?: tf.Variable | null;
}

/**
 * What every LoRA layer shares, as PEFT's `LoraLayer`: per-adapter settings and scalings, the active
 * adapters, enable/disable, merge bookkeeping (LIFO unmerge, safe merge), mixed batches, deletion.
 * Subclasses own their factors and say how an adapter adds to the output and to the weight.
 */
export abstract class LoraLayerBase<B extends BaseWithWeight> extends Module {
  abstract baseLayer: B;
  readonly settings = new Map<string, AdapterSettings>();
  readonly scaling = new Map<string, number>();
  activeAdapters: string[] = [];
  disableAdapters = false;
  readonly mergedAdapters: string[] = [];
  /** Per-row adapter names for the call in progress (PEFT's `adapter_names`), set by PeftModel. */
  batchAdapterNames: string[] | null = null;
  /** Weight norms cached by DoRA merges for unmerge (PEFT's `<adapter>-weight_norm` cache). */
  private readonly doraMergeNorms = new Map<string, tf.Tensor>();

  /** Records an adapter's settings and its scaling (α/r, or α/√r with rsLoRA); the last step of every `updateLayer`. */
  protected storeSettings(name: string, s: AdapterSettings): void {
    this.settings.set(name, { ...s });
    this.scaling.set(name, loraScaling(s.loraAlpha, s.r, s.useRslora));
  }

  /** Adds (or replaces) an adapter. */
  abstract updateLayer(name: string, settings: AdapterSettings): void;
  /** ΔW in the base weight's layout (the caller owns it). */
  abstract getDeltaWeight(name: string): tf.Tensor;
  abstract factorA(name: string): tf.Variable;
  abstract factorB(name: string): tf.Variable;
  /** The adapter's tensors by the key suffix PEFT saves them under. */
  abstract savedTensors(name: string): Record<string, tf.Variable>;
  /** Frees and unregisters the adapter's own weights. */
  protected abstract removeAdapterWeights(name: string): void;
  /**
   * `result` plus adapter `name`'s contribution for input x; `rows`, when given, is a [B, 1, …] mask
   * of the batch rows this adapter serves (mixed batches).
   */
  protected abstract addAdapterOutput(result: tf.Tensor, x: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor;
  /** The lora_B bias of an adapter, merged into the base bias (lora_bias). */
  protected loraBias(_name: string): tf.Tensor | null {
    return null;
  }
  /**
   * DoRA: ‖W₀ + ΔW‖ for `weight` = W₀ + ΔW, one norm per magnitude entry, shaped to scale the base
   * weight by broadcasting. Layers that take DoRA adapters override this and {@link doraMagnitude}.
   */
  protected doraWeightNorm(_name: string, _weight: tf.Tensor): tf.Tensor {
    throw new Error(`DoRA is not supported on ${this.constructor.name}`);
  }
  /** DoRA: the adapter's magnitude, shaped as {@link doraWeightNorm}'s result. */
  protected doraMagnitude(_name: string): tf.Tensor {
    throw new Error(`DoRA is not supported on ${this.constructor.name}`);
  }

  /**
   * W after merging `name`: W + ΔW, or for DoRA (m / ‖W₀ + ΔW‖) ⊙ (W + ΔW). As PEFT 0.21, the norm
   * is taken on W₀, the base weight with the adapters merged before taken out again (what forward
   * sees), and kept for unmerge.
   */
  protected mergedWeight(name: string, w: tf.Tensor): tf.Tensor {
    const delta = this.getDeltaWeight(name);
    if (!this.settings.get(name)?.useDora) return tf.add(w, delta);
    const w0 = this.mergedAdapters.reduceRight((acc, merged) => this.unmergedWeight(merged, acc), w);
    const norm = tf.keep(this.doraWeightNorm(name, tf.add(w0, delta)));
    this.doraMergeNorms.get(name)?.dispose();
    this.doraMergeNorms.set(name, norm);
    return tf.mul(tf.div(this.doraMagnitude(name), norm), tf.add(w, delta));
  }
  /** W after unmerging `name`: W − ΔW, or for DoRA W / (m / ‖W₀ + ΔW‖) − ΔW with the norm kept at merge time. */
  protected unmergedWeight(name: string, w: tf.Tensor): tf.Tensor {
    const norm = this.doraMergeNorms.get(name);
    if (!norm) return tf.sub(w, this.getDeltaWeight(name));
    return tf.sub(tf.div(w, tf.div(this.doraMagnitude(name), norm)), this.getDeltaWeight(name));
  }
  /** Frees the DoRA merge norms of adapters that are no longer merged. */
  private dropDoraMergeNorms(): void {
    for (const [name, norm] of this.doraMergeNorms) {
      if (this.mergedAdapters.includes(name)) continue;
      norm.dispose();
      this.doraMergeNorms.delete(name);
    }
  }

  /** Removes an adapter and frees its weights. */
  deleteAdapter(name: string): void {
    if (!this.settings.has(name)) return;
    this.removeAdapterWeights(name);
    this.settings.delete(name);
    this.scaling.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
    const merged = this.mergedAdapters.indexOf(name);
    if (merged >= 0) this.mergedAdapters.splice(merged, 1);
    this.dropDoraMergeNorms();
  }

  forward(x: tf.Tensor): tf.Tensor {
    if (this.disableAdapters) {
      if (this.mergedAdapters.length) this.unmerge();
      return this.baseLayer.call(x);
    }
    const names = this.batchAdapterNames;
    if (names) {
      if (names.length !== x.shape[0])
        throw new Error(`adapter_names has ${names.length} entries for a batch of ${x.shape[0]}`);
      if (this.mergedAdapters.length)
        throw new Error(
          'Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.',
        );
      if (names.some((n) => this.settings.get(n)?.useDora))
        throw new Error('Cannot pass `adapter_names` when DoRA is enabled.');
    } else if (this.mergedAdapters.length) return this.baseLayer.call(x);
    return tf.tidy(() => {
      let result = this.baseLayer.call(x) as tf.Tensor;
      for (const name of names ? new Set(names) : this.activeAdapters) {
        if (!this.settings.has(name)) continue;
        const rows = names
          ? tf.tensor(
              names.map((n) => (n === name ? 1 : 0)),
              [names.length, ...new Array(x.rank - 1).fill(1)],
            )
          : null;
        result = this.addAdapterOutput(result, x, name, rows);
      }
      return result;
    });
  }

  /**
   * Adds the adapters' ΔW into the base weight (PEFT's `merge`). With `safeMerge`, each merged weight
   * is checked for NaN/Inf before it replaces the base weight (a broken adapter throws PEFT's error and
   * leaves the weight untouched); the check reads the backend, so a safe merge returns a Promise,
   * which works on every backend, webgpu in Node included.
   */
  merge(options?: { adapterNames?: string[]; safeMerge?: false }): void;
  merge(options: { adapterNames?: string[]; safeMerge: true }): Promise<void>;
  merge(options: { adapterNames?: string[]; safeMerge?: boolean }): void | Promise<void>;
  merge(options: { adapterNames?: string[]; safeMerge?: boolean } = {}): void | Promise<void> {
    const names = (options.adapterNames ?? this.activeAdapters).filter(
      (n) => this.settings.has(n) && !this.mergedAdapters.includes(n),
    );
    if (!options.safeMerge) {
      for (const name of names) this.commitMerge(name, this.prepareMerge(name));
      return;
    }
    return (async () => {
      for (const name of names) {
        const next = this.prepareMerge(name);
        // PEFT's safe_merge: the merged weight (and bias) checked before anything is written
        if (!(await allFinite(next))) {
          tf.dispose(next);
          this.dropDoraMergeNorms();
          throw new Error(`NaNs detected in the merged weights. The adapter ${name} seems to be broken`);
        }
        this.commitMerge(name, next);
      }
    })();
  }

  /**
   * The merged weight, and the merged bias when the adapter has a lora_B bias, without writing them:
   * every error (no base bias for lora_bias, a grouped convolution) comes before the weights change.
   */
  private prepareMerge(name: string): tf.Tensor[] {
    const loraBias = this.loraBias(name);
    const bias = this.baseLayer.bias;
    if (loraBias && !bias)
      throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
    const weight = tf.tidy(() => this.mergedWeight(name, this.baseLayer.weight));
    if (!loraBias || !bias) return [weight];
    return [weight, tf.tidy(() => tf.add(bias, tf.mul(loraBias, this.scaling.get(name) as number)))];
  }

  /** Puts the merged weight (and bias) in place, freeing them, and records the adapter as merged. */
  private commitMerge(name: string, [weight, bias]: tf.Tensor[]): void {
    this.baseLayer.weight.assign(weight as tf.Tensor);
    weight?.dispose();
    if (bias) {
      this.baseLayer.bias?.assign(bias);
      bias.dispose();
    }
    this.mergedAdapters.push(name);
  }

  /** Subtracts merged adapters again, last merged first (PEFT's `unmerge`). */
  unmerge(): void {
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop() as string;
      const w = this.baseLayer.weight;
      tf.tidy(() => w.assign(this.unmergedWeight(name, w)));
      const loraBias = this.loraBias(name);
      const bias = this.baseLayer.bias;
      if (loraBias && bias)
        tf.tidy(() => bias.assign(tf.sub(bias, tf.mul(loraBias, this.scaling.get(name) as number))));
    }
    this.dropDoraMergeNorms();
  }
}

/** The base layer's bias, if it has one (embeddings have none). */
export function baseBias(layer: { baseLayer: Module }): tf.Variable | null {
  return (layer.baseLayer as { bias?: tf.Variable | null }).bias ?? null;
}
