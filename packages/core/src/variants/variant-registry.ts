import type * as tf from '@tensorflow/tfjs-core';
import type { LoraConfig } from '../lora-config';
import type { AdapterSettings } from '../layers/adapter-settings';
import type { TunerLayer } from '../layers/tuner-layer';
import { Registry } from '../registry';
import { doraVariant } from './dora';

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

const variants = new Registry<LoraVariant>('a LoRA variant', [[doraVariant.name, doraVariant]]);

/**
 * Registers a layer variant: every adapter whose config asks for it (`variant.requested`) on a layer
 * it serves (`variant.supports`) runs through it. Registering a taken name is an error unless
 * `{ override: true }`. Returns a function that takes the registration back.
 *
 * @example
 * ```ts
 * // in @lora/arrow's registering module (listed in its package.json "sideEffects")
 * registerLoraVariant(arrowVariant);
 * ```
 */
export function registerLoraVariant(variant: LoraVariant, options: { override?: boolean } = {}): () => void {
  for (const method of ['requested', 'supports', 'init', 'forward', 'merge', 'unmerge'] as const)
    if (typeof variant?.[method] !== 'function')
      throw new TypeError(
        `LoRA variant '${variant?.name}' has no ${method}() method; a variant implements all of them`,
      );
  return variants.add(variant.name, variant, options);
}

/** The registered variant of that name. */
export function lookupLoraVariant(name: string): LoraVariant | undefined {
  return variants.get(name);
}

/** Every registered variant. */
export function loraVariants(): LoraVariant[] {
  return variants.values();
}

/** A Python tuple of strings as PEFT prints it: `('use_dora',)`, `('arrow_config', 'use_dora')`. */
function pythonTuple(keys: string[]): string {
  return `(${keys.map((k) => `'${k}'`).join(', ')}${keys.length === 1 ? ',' : ''})`;
}

/**
 * The variant an adapter's config asks for on this layer, or undefined for plain LoRA (PEFT's
 * `resolve_lora_variant`): more than one, or one the layer does not support, is PEFT's error.
 */
export function resolveLoraVariant(layer: TunerLayer, request: LoraVariantRequest): LoraVariant | undefined {
  const asked = variants
    .values()
    .filter((v) => v.requested(request))
    .sort((a, b) => (a.configKey < b.configKey ? -1 : a.configKey > b.configKey ? 1 : 0));
  if (asked.length === 0) return undefined;
  const variant = asked[0] as LoraVariant;
  if (asked.length > 1 || !variant.supports(layer)) {
    const where = request.settings.path ? ` at '${request.settings.path}'` : '';
    throw new Error(
      `Invalid or unsupported variant combination: ${pythonTuple(asked.map((v) => v.configKey))} (on a ${layer.constructor.name}${where}; ` +
        `${asked.length > 1 ? 'one adapter takes one variant' : `${variant.label ?? variant.name} does not support this layer`})`,
    );
  }
  variant.check?.(layer, request);
  return variant;
}

/** The names of layer sub-modules whose parameters train with their adapter: LoRA's own and the variants'. */
export function trainableModuleNames(): string[] {
  const names = ['lora_A', 'lora_B', 'lora_embedding_A', 'lora_embedding_B'];
  for (const v of variants.values()) for (const n of v.trainableModules ?? []) if (!names.includes(n)) names.push(n);
  return names;
}
