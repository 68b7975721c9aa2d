import { LoraConfigError } from '../errors';
import type * as tf from '@tensorflow/tfjs-core';
import type { AdapterSettings } from '../layers/lora-linear';

/** What an initialiser gets: the layer's base weight and the new adapter's factors, all writable. */
export interface LoraInitContext {
  /** Module path of the layer in the user's model. */
  path: string;
  adapterName: string;
  settings: AdapterSettings;
  /**
   * The base layer's weight ([out, in] for Linear; [in, out] for a TransposedLinear, when
   * `settings.fanInFanOut`); an initialiser may replace its value (`assign`).
   */
  baseWeight: tf.Variable;
  loraA: tf.Variable;
  loraB: tf.Variable;
  scaling: number;
}

/** An initialiser for `init_lora_weights = name`, registered by a method package. */
export type LoraInitializer = (ctx: LoraInitContext) => void;

const registry = new Map<string, LoraInitializer>();

/** Which package provides each pluggable initialisation. */
const PROVIDERS: Record<string, string> = { loftq: '@lora/loftq', eva: '@lora/eva', lora_ga: '@lora/loraga' };

/**
 * Registers an initialisation under an `init_lora_weights` name. `@lora/loftq`, `@lora/eva` and
 * `@lora/loraga` register `'loftq'`, `'eva'` and `'lora_ga'` when imported.
 *
 * @example
 * ```ts
 * registerLoraInit('eva', (ctx) => { ctx.loraB.assign(tf.zerosLike(ctx.loraB)); });
 * ```
 */
export function registerLoraInit(name: string, init: LoraInitializer): void {
  registry.set(name, init);
}

/** The registered initialiser, or an error naming the package that provides it. */
export function lookupLoraInit(name: string): LoraInitializer {
  const found = registry.get(name);
  if (found) return found;
  const pkg = PROVIDERS[name];
  throw new LoraConfigError(
    pkg
      ? `init_lora_weights='${name}' is provided by ${pkg}: npm install ${pkg} and import it before creating the LoRA model`
      : `Unknown initialization init_lora_weights='${name}'`,
  );
}
