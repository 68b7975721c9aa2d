import * as tf from '@tensorflow/tfjs-core';
import { addScaled } from '@lora/kernels';
import { Dropout, Module, ModuleDict, type StoredWeightLayer, isStoredWeightLayer } from '@lora/nn';
import { LoraConfigError } from '../errors';
import { allFinite } from '../all-finite';
import { runLoraInit } from '../inits/init-registry';
import { type LoraConfig, loraScaling } from '../lora-config';
import type { Magnitude } from '../variants/dora';
import { loraVariants, resolveLoraVariant } from '../variants/variant-registry';
import type { LoraVariant } from '../variants/variant-types';
import { type AdapterSettings, configFromSettings } from './adapter-settings';
import type { BaseWithWeight, LoraLayerKind, TunerLayer } from './tuner-layer';

function sameShape(a: tf.Tensor, b: tf.Tensor): boolean {
  return a.rank === b.rank && a.shape.every((d, i) => d === b.shape[i]);
}

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

/** Initialisations that read or rewrite the base weight, which a 16-bit (or quantized) base keeps encoded. */
const BASE_WRITING_INITS = /^(pissa(_niter_\d+)?|olora|loftq|lora_ga|corda.*)$/;

function isPromise(v: unknown): v is Promise<void> {
  return typeof (v as { then?: unknown } | undefined)?.then === 'function';
}

/**
 * What every LoRA layer shares, as PEFT's `LoraLayer`: per-adapter settings and scalings, the active
 * adapters, enable/disable, the one path every adapter takes at creation (checks, factors,
 * initialisation through the init registry, variant), forward and merge bookkeeping (LIFO unmerge,
 * safe merge) with each adapter's variant owning its part, mixed batches, deletion. Subclasses own
 * their factors: their shapes, their construction draws, ΔW and the low-rank path.
 *
 * A dispatcher of a method package (a quantized base, say) returns a subclass of this.
 */
export abstract class LoraLayerBase<B extends BaseWithWeight = BaseWithWeight> extends Module implements TunerLayer {
  abstract readonly kind: LoraLayerKind;
  abstract baseLayer: B;
  readonly settings = new Map<string, AdapterSettings>();
  readonly scaling = new Map<string, number>();
  activeAdapters: string[] = [];
  disableAdapters = false;
  readonly mergedAdapters: string[] = [];
  /** Per-row adapter names for the call in progress (PEFT's `adapter_names`), set by PeftModel. */
  batchAdapterNames: string[] | null = null;
  /** Each adapter's variant (DoRA, Arrow…); plain LoRA adapters have none. */
  private readonly variants = new Map<string, LoraVariant>();
  /** Asynchronous initialisations still running, by adapter. */
  private readonly pending = new Map<string, Promise<void>>();
  /** Module dictionaries variants asked for, by the name they are registered under. */
  private readonly variantDicts = new Map<string, ModuleDict>();

  /** PEFT's checks of an adapter's settings on this kind of layer, before anything is allocated. */
  protected abstract checkSettings(name: string, settings: AdapterSettings): void;
  /**
   * Creates and registers the adapter's A and B (with PyTorch's construction draws, in PEFT's order)
   * and its dropout; the initialisation runs next, on these.
   */
  protected abstract createAdapterWeights(name: string, settings: AdapterSettings): void;
  /** Frees and unregisters the adapter's own weights. */
  protected abstract removeAdapterWeights(name: string): void;
  /** A and B (and lora_B's bias) by the key suffix PEFT saves them under. */
  protected abstract ownTensors(name: string): Record<string, tf.Variable>;
  abstract getDeltaWeight(name: string): tf.Tensor;
  abstract factorA(name: string): tf.Variable;
  abstract factorB(name: string): tf.Variable;
  abstract lowRankForward(name: string, x: tf.Tensor): tf.Tensor;
  abstract dropout(name: string): Module;

  /**
   * `result + scale·lowRankForward(name, x)` in one fused op where the layer has one (LoraLinear on
   * webgpu: `@lora/kernels`' addLowRank), or null: the caller then takes the composite path. The
   * fused result must equal the composite's to float32 rounding.
   */
  protected addScaledLowRank(_name: string, _x: tf.Tensor, _result: tf.Tensor, _scale: number): tf.Tensor | null {
    return null;
  }

  /**
   * The whole forward (base layer and adapters) as one fused op where the layer has one (LoraLinear on
   * webgpu, one plain adapter: `@lora/kernels`' linearLowRank), or null for the general path. Called
   * only when no adapter is merged, adapters are enabled and the batch is not mixed.
   */
  protected fusedForward(_x: tf.Tensor): tf.Tensor | null {
    return null;
  }

  loraBias(_name: string): tf.Variable | null {
    return null;
  }

  settingsFor(settings: AdapterSettings): AdapterSettings {
    return settings;
  }

  /** Records an adapter's settings and its scaling (α/r, or α/√r with rsLoRA). */
  protected storeSettings(name: string, s: AdapterSettings): void {
    this.settings.set(name, { ...s });
    this.scaling.set(name, loraScaling(s.loraAlpha, s.r, s.useRslora));
  }

  /**
   * Adds (or replaces) an adapter, as PEFT's `update_layer`: the layer's checks, the variant the
   * config asks for (checked before anything is allocated), A and B with PyTorch's construction draws,
   * the initialisation `settings.initLoraWeights` names (through the init registry), then the
   * variant's own init. A replaced adapter stays active where it was. A failure removes the adapter
   * again. An asynchronous initialiser makes this return a Promise (see {@link pendingInit}), after
   * which the variant's init runs.
   */
  updateLayer(name: string, settings: AdapterSettings, config?: LoraConfig): void | Promise<void> {
    this.checkSettings(name, settings);
    if (this.storedBase) this.checkStoredBase(settings);
    const request = { config: config ?? configFromSettings(settings), settings };
    const variant = resolveLoraVariant(this, request);
    const activeAt = this.activeAdapters.indexOf(name);
    if (this.settings.has(name)) this.deleteAdapter(name);
    this.createAdapterWeights(name, settings);
    this.storeSettings(name, settings);
    const stored = this.settings.get(name) as AdapterSettings;
    // an asynchronous initialisation may end after the adapter was deleted or replaced: then nothing is left to finish
    const current = () => this.settings.get(name) === stored;
    const finish = (): void => {
      if (!current()) return;
      try {
        if (variant) {
          variant.init(this, name, { config: request.config, settings: stored });
          this.variants.set(name, variant);
        }
      } catch (e) {
        this.deleteAdapter(name);
        throw e;
      }
      if (activeAt >= 0 && !this.activeAdapters.includes(name)) this.activeAdapters.splice(activeAt, 0, name);
      this.notifyAdapterChange();
    };
    let started: void | Promise<void>;
    try {
      started = runLoraInit({
        path: settings.path ?? '',
        adapterName: name,
        layer: this,
        kind: this.kind,
        config: request.config,
        settings: stored,
        baseWeight: this.baseLayer.weight,
        loraA: this.factorA(name),
        loraB: this.factorB(name),
        loraBBias: this.loraBias(name),
        scaling: this.scaling.get(name) as number,
      });
    } catch (e) {
      this.deleteAdapter(name);
      throw e;
    }
    if (!isPromise(started)) return finish();
    const done = started.then(finish, (e: unknown) => {
      if (current()) this.deleteAdapter(name);
      throw e;
    });
    const tracked = done.finally(() => {
      if (this.pending.get(name) === tracked) this.pending.delete(name);
    });
    tracked.catch(() => {}); // observed by whoever awaits it; never an unhandled rejection
    this.pending.set(name, tracked);
    return tracked;
  }

  pendingInit(name: string): Promise<void> | undefined {
    return this.pending.get(name);
  }

  variantOf(name: string): LoraVariant | undefined {
    return this.variants.get(name);
  }

  /**
   * Registers, empty, the module dictionaries of the registered variants that serve this layer (DoRA's
   * `lora_magnitude_vector`), as PEFT's LoraLayer has them from the start; a subclass calls it after
   * registering its own containers. Without it they are registered when first used.
   */
  protected registerVariantModules(): void {
    for (const v of loraVariants())
      if (v.supports(this)) for (const key of v.trainableModules ?? []) this.variantModules(key);
  }

  variantModules<M extends Module = Module>(key: string): ModuleDict<M> {
    let dict = this.variantDicts.get(key);
    if (!dict) {
      dict = this.registerModule(key, new ModuleDict());
      this.variantDicts.set(key, dict);
    }
    return dict as ModuleDict<M>;
  }

  variantBuffer(key: string): tf.Tensor | null {
    return this.getBuffer(key) ?? null;
  }

  setVariantBuffer(key: string, value: tf.Tensor | null): void {
    if (this.getBuffer(key) === undefined) this.registerBuffer(key, null, false);
    this.setBuffer(key, value);
  }

  /** DoRA's magnitudes (PEFT's `lora_magnitude_vector`), by adapter: empty unless an adapter uses DoRA. */
  get loraMagnitudeVector(): ModuleDict<Magnitude> {
    return this.variantModules<Magnitude>('lora_magnitude_vector');
  }

  savedTensors(name: string): Record<string, tf.Variable> {
    return { ...this.ownTensors(name), ...this.variants.get(name)?.savedTensors?.(this, name) };
  }

  /** Tells each variant adapter of the layer that its adapters changed (Arrow's `on_adapter_change`). */
  private notifyAdapterChange(): void {
    for (const [n, v] of this.variants) v.onAdapterChange?.(this, n);
  }

  /** Removes an adapter and frees its weights (its variant's modules and state too). */
  deleteAdapter(name: string): void {
    if (!this.settings.has(name)) return;
    this.variants.get(name)?.remove?.(this, name);
    for (const dict of this.variantDicts.values()) if (dict.has(name)) dict.delete(name)?.dispose();
    this.removeAdapterWeights(name);
    this.settings.delete(name);
    this.scaling.delete(name);
    this.variants.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
    const merged = this.mergedAdapters.indexOf(name);
    if (merged >= 0) this.mergedAdapters.splice(merged, 1);
    this.notifyAdapterChange();
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
      for (const n of new Set(names)) {
        const v = this.variants.get(n);
        if (v && v.mixedBatch === false)
          throw new Error(`Cannot pass \`adapter_names\` when ${v.label ?? v.name} is enabled.`);
      }
    } else if (this.mergedAdapters.length) return this.baseLayer.call(x);
    return tf.tidy(() => {
      const whole = names ? null : this.fusedForward(x);
      if (whole) return whole;
      let result = this.baseLayer.call(x) as tf.Tensor;
      for (const name of names ? new Set(names) : this.activeAdapters) {
        if (!this.settings.has(name)) continue;
        const rows = names
          ? tf.tensor(
              names.map((n) => (n === name ? 1 : 0)),
              [names.length, ...new Array(x.rank - 1).fill(1)],
            )
          : null;
        const variant = this.variants.get(name);
        if (variant) {
          const out = variant.forward(this, name, x, result);
          // a mixed batch keeps the variant's output on this adapter's rows only
          result = rows ? tf.add(result, tf.mul(tf.sub(out, result), rows)) : out;
          continue;
        }
        const scale = this.scaling.get(name) as number;
        const dropped = this.dropout(name).call(x) as tf.Tensor;
        const fused = rows ? null : this.addScaledLowRank(name, dropped, result, scale);
        if (fused) {
          result = fused;
          continue;
        }
        const lora = this.lowRankForward(name, dropped);
        // result + s·lora: one dispatch on webgpu (@lora/kernels), tf.add(result, tf.mul(lora, s)) elsewhere
        result = rows
          ? tf.add(result, tf.mul(tf.mul(lora, scale), rows))
          : sameShape(result, lora)
            ? addScaled(result, lora, scale)
            : tf.add(result, tf.mul(lora, scale));
      }
      return result;
    });
  }

  /** The base layer when it keeps its weight encoded (a 16-bit `HalfLinear` / `HalfEmbedding`), else null. */
  protected get storedBase(): StoredWeightLayer | null {
    return isStoredWeightLayer(this.baseLayer) ? this.baseLayer : null;
  }

  /** DoRA and base-rewriting initialisations need a float32 base weight to read and write. */
  private checkStoredBase(s: AdapterSettings): void {
    const base = this.storedBase as StoredWeightLayer;
    const where = `${s.path ? `'${s.path}'` : 'this layer'} (${base.constructor.name}, ${base.storageFormat})`;
    if (s.useDora)
      throw new LoraConfigError(
        `DoRA over a base stored in ${base.storageFormat} is not supported here (${where}): load the model with weightStorage: 'float32' for DoRA`,
        { field: 'use_dora' },
      );
    const init = s.initLoraWeights;
    if (typeof init === 'string' && BASE_WRITING_INITS.test(init))
      throw new LoraConfigError(
        `init_lora_weights='${init}' reads or rewrites the base weight, which ${where} keeps encoded: load the model with weightStorage: 'float32' for it`,
        { field: 'init_lora_weights' },
      );
  }

  /** The base weight as float32: decoded from a stored base (the caller owns it), or the weight itself. */
  private baseWeightValue(): tf.Tensor {
    return this.storedBase?.decodeWeight() ?? this.baseLayer.weight;
  }

  /**
   * The base weight with the merged adapters taken out again, last merged first (what forward sees);
   * the caller owns it.
   */
  unmergedBaseWeight(): tf.Tensor {
    return tf.tidy(() =>
      this.mergedAdapters.reduceRight(
        (acc, merged) => this.unmergedWeight(merged, acc),
        this.storedBase ? this.storedBase.decodeWeight() : (tf.clone(this.baseLayer.weight) as tf.Tensor),
      ),
    );
  }

  /**
   * W after merging `name`: W + ΔW, or what the adapter's variant makes of it. Over a 16-bit base,
   * PEFT's order of roundings: a Linear's plain merge adds the float32 ΔW to W (rounded once, when
   * stored); a safe merge, and an embedding's merge, round ΔW to the base's dtype first
   * (`delta_weight.to(orig_dtype)`).
   */
  protected mergedWeight(name: string, w: tf.Tensor, safe: boolean): tf.Tensor {
    const variant = this.variants.get(name);
    if (variant) return variant.merge(this, name, w, { safe });
    return tf.add(w, this.storedDelta(name, safe || this.kind !== 'linear'));
  }

  /** W after unmerging `name`: W − ΔW, or what the adapter's variant makes of it (ΔW rounded to a 16-bit base's dtype first, as PEFT). */
  protected unmergedWeight(name: string, w: tf.Tensor): tf.Tensor {
    const variant = this.variants.get(name);
    if (variant) return variant.unmerge(this, name, w);
    return tf.sub(w, this.storedDelta(name, true));
  }

  /** ΔW, rounded to the stored base's dtype when `round` and the base is stored 16-bit. */
  private storedDelta(name: string, round: boolean): tf.Tensor {
    const delta = this.getDeltaWeight(name);
    if (!round || !this.storedBase) return delta;
    const rounded = this.storedBase.roundToStorage(delta);
    delta.dispose();
    return rounded;
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
      for (const name of names) this.commitMerge(name, this.prepareMerge(name, false));
      return;
    }
    return (async () => {
      for (const name of names) {
        const next = this.prepareMerge(name, true);
        // PEFT's safe_merge: the merged weight (and bias) checked before anything is written
        if (!(await allFinite(next))) {
          tf.dispose(next);
          this.variants.get(name)?.forgetMerge?.(this, name);
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
  private prepareMerge(name: string, safe: boolean): tf.Tensor[] {
    const loraBias = this.loraBias(name);
    const bias = this.baseLayer.bias;
    if (loraBias && !bias)
      throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
    const weight = tf.tidy(() => this.mergedWeight(name, this.baseWeightValue(), safe));
    if (!loraBias || !bias) return [weight];
    return [weight, tf.tidy(() => tf.add(bias, tf.mul(loraBias, this.scaling.get(name) as number)))];
  }

  /** Puts the merged weight (and bias) in place, freeing them, and records the adapter as merged. */
  private commitMerge(name: string, [weight, bias]: tf.Tensor[]): void {
    // a 16-bit base stores the merged weight rounded to its dtype, as PEFT's in-place add into a bf16 weight
    if (this.storedBase) this.storedBase.setWeight(weight as tf.Tensor);
    else this.baseLayer.weight.assign(weight as tf.Tensor);
    weight?.dispose();
    if (bias) {
      this.baseLayer.bias?.assign(bias);
      bias.dispose();
    }
    this.mergedAdapters.push(name);
  }

  /** Subtracts merged adapters again, last merged first (PEFT's `unmerge`). */
  unmerge(): void {
    const unmerged: string[] = [];
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop() as string;
      unmerged.push(name);
      const stored = this.storedBase;
      if (stored) {
        const w = tf.tidy(() => this.unmergedWeight(name, stored.decodeWeight()));
        stored.setWeight(w);
        w.dispose();
      } else {
        const w = this.baseLayer.weight;
        tf.tidy(() => w.assign(this.unmergedWeight(name, w)));
      }
      const loraBias = this.loraBias(name);
      const bias = this.baseLayer.bias;
      if (loraBias && bias)
        tf.tidy(() => bias.assign(tf.sub(bias, tf.mul(loraBias, this.scaling.get(name) as number))));
    }
    for (const name of unmerged) this.variants.get(name)?.forgetMerge?.(this, name);
  }
}

/** The base layer's bias, if it has one (embeddings have none). */
export function baseBias(layer: { baseLayer: Module }): tf.Variable | null {
  return (layer.baseLayer as { bias?: tf.Variable | null }).bias ?? null;
}

/** Whether a module is a LoRA layer (of `@lora/core` or made by a registered dispatcher). */
export function isTunerLayer(m: unknown): m is TunerLayer {
  return m instanceof LoraLayerBase;
}
