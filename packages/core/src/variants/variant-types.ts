import type * as tf from '@tensorflow/tfjs-core';
import type { AdapterSettings } from '../layers/adapter-settings';
import type { TunerLayer } from '../layers/tuner-layer';
import type { LoraConfig } from '../lora-config';

/** What a variant is asked with: the adapter's config and its settings on the layer. */
export interface LoraVariantRequest {
  config: LoraConfig;
  settings: AdapterSettings;
}

/**
 * A LoRA variant, as PEFT 0.21's `LoraVariant`: for one adapter on one layer it owns the
 * initialisation of its own state, the forward, the merge (safe and unsafe) and the unmerge. The
 * layer keeps the adapter's A, B, dropout and scaling; the variant reads them through the layer
 * ({@link TunerLayer}) and may read every other adapter on it (Arrow's router does). DoRA is one
 * (`use_dora`); `@lora/arrow` registers Arrow's router (`arrow_config`).
 *
 * The methods are called with the layer, so a variant object holds no per-layer state of its own
 * unless it keys it by layer (a `WeakMap`); per-adapter modules go in `layer.variantModules(key)`,
 * where they are saved, trained and freed with the layer.
 *
 * @example
 * ```ts
 * registerLoraVariant({
 *   name: 'halved',
 *   configKey: 'halved_config',
 *   requested: ({ config }) => config.extra.halved_config != null,
 *   supports: (layer) => layer.kind === 'linear',
 *   init() {},
 *   forward: (layer, name, x, result) =>
 *     tf.tidy(() => tf.add(result, tf.mul(layer.lowRankForward(name, layer.dropout(name).call(x)), 0.5 * layer.scaling.get(name)!))),
 *   merge: (layer, name, weight) => tf.tidy(() => { const d = layer.getDeltaWeight(name); return tf.add(weight, tf.mul(d, 0.5)); }),
 *   unmerge: (layer, name, weight) => tf.tidy(() => { const d = layer.getDeltaWeight(name); return tf.sub(weight, tf.mul(d, 0.5)); }),
 * });
 * ```
 */
export interface LoraVariant {
  /** The registry name (`'dora'`). */
  readonly name: string;
  /** The config field that asks for it, as PEFT names it (`'use_dora'`, `'arrow_config'`): used in errors. */
  readonly configKey: string;
  /** How errors name the method (`'DoRA'`); defaults to `name`. */
  readonly label?: string;
  /** Whether the adapter's config asks for this variant (PEFT's `is_lora_variant` fields). */
  requested(request: LoraVariantRequest): boolean;
  /** Whether the variant serves this layer; a request on a layer it does not serve is an error, as in PEFT. */
  supports(layer: TunerLayer): boolean;
  /** Refuses settings the variant cannot take, before anything is allocated. */
  check?(layer: TunerLayer, request: LoraVariantRequest): void;
  /**
   * After the adapter's factors exist and were initialised (PEFT calls the variant's `init` at the
   * end of `update_layer`): creates the variant's own state for this adapter.
   */
  init(layer: TunerLayer, adapterName: string, request: LoraVariantRequest): void;
  /**
   * The layer's output with this adapter applied: `result` is the base output plus the adapters
   * applied before this one; the return value replaces it (PEFT: "the overall result, not just the
   * diff"). Runs inside the layer's `tf.tidy`.
   */
  forward(layer: TunerLayer, adapterName: string, x: tf.Tensor, result: tf.Tensor): tf.Tensor;
  /**
   * The base weight with this adapter merged into `weight` (the current base weight, earlier merged
   * adapters in it): PEFT's `merge_safe` (`safe`: the result is checked for NaN/Inf before it is
   * written) and `merge_unsafe`. Returns a new tensor, which the layer writes and frees; runs inside
   * `tf.tidy` (`tf.keep` what the variant caches for unmerge).
   */
  merge(layer: TunerLayer, adapterName: string, weight: tf.Tensor, options: { safe: boolean }): tf.Tensor;
  /** `weight` with this adapter taken out again (PEFT's `unmerge`); must not drop what it cached (see {@link forgetMerge}). */
  unmerge(layer: TunerLayer, adapterName: string, weight: tf.Tensor): tf.Tensor;
  /** Frees what {@link merge} cached for the adapter: called once it is unmerged, or its merge was refused. */
  forgetMerge?(layer: TunerLayer, adapterName: string): void;
  /** Tensors saved with the adapter besides A and B, by PEFT's key suffix (`lora_magnitude_vector`). */
  savedTensors?(layer: TunerLayer, adapterName: string): Record<string, tf.Variable>;
  /** Names of the layer's module dictionaries whose parameters train with the adapter (PEFT's `adapter_layer_names`). */
  readonly trainableModules?: readonly string[];
  /** Frees the variant's state for the adapter (its modules in `variantModules` are freed by the layer). */
  remove?(layer: TunerLayer, adapterName: string): void;
  /** Called after an adapter was added to or removed from the layer, once for each adapter of the layer this variant serves (Arrow's `on_adapter_change`). */
  onAdapterChange?(layer: TunerLayer, adapterName: string): void;
  /** Mixed batches (`adapterNames`): false refuses them, as PEFT does for DoRA; default true. */
  readonly mixedBatch?: boolean;
}
