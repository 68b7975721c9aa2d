import type * as tf from '@tensorflow/tfjs-core';
import type { Module, ModuleDict } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import type { LoraVariant } from '../variants/variant-types';
import type { AdapterSettings } from './adapter-settings';

/**
 * The kind of base a LoRA layer wraps, which decides the shapes of its factors: `'linear'` (A
 * `[r, in]`, B `[out, r]`, Linear and TransposedLinear bases and any Linear-like base a dispatcher
 * wraps, e.g. a quantized one), `'embedding'` (A `[r, vocab]`, B `[dim, r]`), `'conv'` (A a
 * convolution in → r, B a 1×1 convolution r → out).
 */
export type LoraLayerKind = 'linear' | 'embedding' | 'conv';

/** A base layer LoRA wraps: it owns a weight (and maybe a bias) that merging writes into. */
export interface BaseWithWeight extends Module {
  weight: tf.Variable;
  bias?: tf.Variable | null;
}

/**
 * What every LoRA layer offers, whatever its kind (what `PeftModel.loraLayers()` yields and what
 * initialisers, variants and method packages work with), as PEFT's `LoraLayer`. The layers of
 * `@lora/core` (`LoraLinear`, `LoraEmbedding`, `LoraConv`) and those a registered dispatcher makes
 * (by extending `LoraLayerBase`) all have it.
 *
 * @example
 * ```ts
 * for (const [path, layer] of peft.loraLayers()) {
 *   if (!layer.settings.has('default')) continue;
 *   const delta = layer.getDeltaWeight('default');   // ΔW = s·B·A in the base weight's layout
 *   console.log(path, layer.kind, layer.scaling.get('default'), delta.shape);
 *   delta.dispose();
 * }
 * ```
 */
export interface TunerLayer extends Module {
  readonly kind: LoraLayerKind;
  /** The wrapped layer (PEFT's `base_layer`). */
  readonly baseLayer: BaseWithWeight;
  /** Each adapter's settings (r, alpha, dropout, init…), in the order the adapters were added. */
  readonly settings: Map<string, AdapterSettings>;
  /** Each adapter's scaling s (α/r, or α/√r with rsLoRA). */
  readonly scaling: Map<string, number>;
  activeAdapters: string[];
  disableAdapters: boolean;
  /** Adapters merged into the base weight, in merge order. */
  readonly mergedAdapters: string[];
  /** Per-row adapter names for the call in progress (mixed batches), set by `PeftModel`. */
  batchAdapterNames: string[] | null;
  /**
   * Adds (or replaces, keeping it active where it was) an adapter. `config` is the adapter's config
   * (what initialisers and variants read); without it, PEFT's defaults with the settings' values. An
   * asynchronous initialiser makes this return a Promise (also kept as {@link pendingInit}).
   */
  updateLayer(name: string, settings: AdapterSettings, config?: LoraConfig): void | Promise<void>;
  /** The settings this layer gives an adapter whose config resolves to `settings` (a LoraLinear sets fan_in_fan_out from its base). */
  settingsFor(settings: AdapterSettings): AdapterSettings;
  /** The adapter's asynchronous initialisation still running, if any. */
  pendingInit(name: string): Promise<void> | undefined;
  /** Removes an adapter and frees its weights. */
  deleteAdapter(name: string): void;
  /** ΔW = s·B·A in the base weight's layout (PEFT's `get_delta_weight`); the caller owns it. */
  getDeltaWeight(name: string): tf.Tensor;
  /** A of an adapter (writable: `assign`). */
  factorA(name: string): tf.Variable;
  /** B of an adapter (writable: `assign`). */
  factorB(name: string): tf.Variable;
  /** The adapter's lora_B bias (`lora_bias`), or null. */
  loraBias(name: string): tf.Variable | null;
  /** The adapter's `lora_dropout` module (an identity for embeddings, which have none). */
  dropout(name: string): Module;
  /** B·A applied to x (already through dropout), unscaled: the low-rank path of the adapter's forward. */
  lowRankForward(name: string, x: tf.Tensor): tf.Tensor;
  /** The adapter's tensors by the key suffix PEFT saves them under (its variant's included). */
  savedTensors(name: string): Record<string, tf.Variable>;
  /** The variant that owns the adapter's forward and merge (DoRA, Arrow…), or undefined for plain LoRA. */
  variantOf(name: string): LoraVariant | undefined;
  /**
   * A module dictionary on the layer under `key` (e.g. `'lora_magnitude_vector'`), registered the
   * first time it is asked for: where a variant keeps per-adapter modules under PEFT's names.
   */
  variantModules<M extends Module = Module>(key: string): ModuleDict<M>;
  /** A non-persistent buffer of the layer (never saved; freed with the layer) where a variant caches a tensor, or null. */
  variantBuffer(key: string): tf.Tensor | null;
  /** Sets (registering it the first time) a variant's cache buffer; the old value is freed, the new one kept. */
  setVariantBuffer(key: string, value: tf.Tensor | null): void;
  /**
   * The base weight with the merged adapters taken out again, as forward sees it (PEFT's
   * `_unmerged_base_weight`); the caller owns it. What a variant whose merge depends on the base
   * weight (DoRA's norm) reads.
   */
  unmergedBaseWeight(): tf.Tensor;
  merge(options?: { adapterNames?: string[]; safeMerge?: boolean }): void | Promise<void>;
  unmerge(): void;
}
