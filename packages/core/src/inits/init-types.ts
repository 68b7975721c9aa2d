import type * as tf from '@tensorflow/tfjs-core';
import type { AdapterSettings } from '../layers/adapter-settings';
import type { LoraLayerKind, TunerLayer } from '../layers/tuner-layer';
import type { LoraConfig } from '../lora-config';

/**
 * What an initialiser gets for one new adapter on one layer. The adapter is already on the layer
 * (`layer.factorA(adapterName)` is `loraA`), its A and B hold the draws PyTorch's construction makes
 * (so that after the same seed an initialiser that draws again draws what PEFT draws), and every
 * tensor here is writable with `assign`.
 */
export interface LoraInitContext {
  /** Module path of the layer in the user's model ('' for a layer built directly). */
  path: string;
  adapterName: string;
  /** The layer the adapter is being added to. */
  layer: TunerLayer;
  /** The layer's kind (`layer.kind`): which shapes A and B have. */
  kind: LoraLayerKind;
  /** The adapter's config: method sub-configs (`loftqConfig`, `evaConfig`, `loraGaConfig`…) are read here. */
  config: LoraConfig;
  /** The adapter's settings on this layer (r and α after `rankPattern` / `alphaPattern`). */
  settings: AdapterSettings;
  /**
   * The base layer's weight ([out, in] for Linear; [in, out] for a TransposedLinear, when
   * `settings.fanInFanOut`; [vocab, dim] for Embedding; the kernel for convolutions); an initialiser
   * may replace its value (`assign`), as PiSSA and LoftQ do.
   */
  baseWeight: tf.Variable;
  loraA: tf.Variable;
  loraB: tf.Variable;
  /** lora_B's bias (`loraBias`), or null. */
  loraBBias: tf.Variable | null;
  scaling: number;
  /** PEFT's `reset_lora_parameters`: the default init (`true`) or the gaussian one, for this layer's kind. */
  resetLoraParameters(init?: true | 'gaussian'): void;
}

/**
 * An initialiser for an `init_lora_weights` value. It may return a Promise (an asynchronous read of
 * the base weight, a data pass): then `getPeftModel` still returns at once, and the method's entry
 * point awaits `peft.initialized()` before the model is used.
 */
export type LoraInitializer = (ctx: LoraInitContext) => void | Promise<void>;

/** Options of {@link registerLoraInit}. */
export interface LoraInitOptions {
  /** Replace an initialiser registered under the same name (a built-in one included). */
  override?: boolean;
  /**
   * The layer kinds it initialises (default `['linear']`, as PEFT's method inits). On the others,
   * PEFT 0.21's layers decide: an Embedding takes the default init, a convolution refuses the value
   * ("Unknown initialization"), except where PEFT says otherwise (LoRA-GA falls back to the default
   * on convolutions; LoftQ fails on both).
   */
  kinds?: readonly LoraLayerKind[];
  /** Other values this initialiser answers to (e.g. `pissa_niter_4` for `'pissa'`); default: the name alone. */
  matches?: (value: string) => boolean;
}

export interface InitEntry {
  name: string;
  init: LoraInitializer;
  kinds: readonly LoraLayerKind[];
  matches: (value: boolean | string) => boolean;
}

/** A built-in initialisation, registered as any other. */
export interface BuiltinInit extends InitEntry {}

/** The context an initialiser gets, without `resetLoraParameters` (added here). */
export type LoraInitTarget = Omit<LoraInitContext, 'resetLoraParameters'>;
