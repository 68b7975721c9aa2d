import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, loraConfig } from '../lora-config';

/**
 * The adapter saved right after `getPeftModel` with PiSSA/OLoRA (before training), in memory: what
 * `serializeAdapter` returned then. Its config is not read: PEFT replaces the initial adapter's
 * config with the trained one's (`init_lora_weights: true`) before loading it, so only the weights count.
 */
export interface InitialAdapter {
  weights: Uint8Array;
  config?: string;
}

/**
 * Refuses what PEFT refuses before converting (rsLoRA with rank or alpha patterns, whose scalings
 * cannot be kept by doubling α) and warns, as PEFT means to, when the adapter was not initialised
 * by a method that moves the base weights.
 */
export function checkWeightConversion(config: LoraConfig, warn: (message: string) => void = console.warn): void {
  if (config.useRslora && (Object.keys(config.rankPattern).length > 0 || Object.keys(config.alphaPattern).length > 0)) {
    throw new Error(
      'Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported when using `rank_pattern` or `alpha_pattern` at the same time as `use_rslora=True`.',
    );
  }
  // PEFT 0.21 tests a copy whose init is already `true`, so its warning never shows; this tests the adapter's own init.
  if (!/^(pissa|corda|olora|lora_ga|true)/i.test(String(config.initLoraWeights))) {
    warn(
      '`path_initial_model_for_weight_conversion` only works for converting a PiSSA/CorDA/OLoRA/LoRA-GA adapter to a LoRA adapter',
    );
  }
}

/**
 * PEFT's `subtract_mutated_init`: with W = W_res + s·B₀A₀ at init and W_res + s·BA after training,
 * the update s·(BA − B₀A₀) is a plain LoRA of twice the rank, A' = [A; A₀], B' = [B, −B₀], applied
 * to the unchanged W. Only `lora_A` / `lora_B` keys are kept (as PEFT); the others are reported
 * through `warn`. Returns new tensors (the caller owns them).
 *
 * @example
 * ```ts
 * const lora = convertToLoraTensors(adapterStateDict(peft), initialTensors);
 * ```
 */
export function convertToLoraTensors(
  trained: Record<string, tf.Tensor>,
  initial: Record<string, tf.Tensor>,
  options: { warn?: (message: string) => void } = {},
): Record<string, tf.Tensor> {
  const warn = options.warn ?? console.warn;
  const out: Record<string, tf.Tensor> = {};
  const dropped: string[] = [];
  try {
    for (const [key, t] of Object.entries(trained)) {
      const isA = key.includes('lora_A');
      if (!isA && !key.includes('lora_B')) {
        dropped.push(key);
        continue;
      }
      if (t.rank < 2) {
        throw new Error(
          `'${key}' (lora_bias) cannot be converted: a bias has no rank to double. Train PiSSA/OLoRA adapters with loraBias: false`,
        );
      }
      const init = initial[key];
      if (!init)
        throw new Error(
          `the initial adapter has no '${key}': was it saved from this model, right after getPeftModel and before training?`,
        );
      if (init.shape.join(',') !== t.shape.join(',')) {
        throw new Error(
          `the initial adapter's '${key}' has shape [${init.shape.join(', ')}] but the trained one [${t.shape.join(', ')}]; the initial adapter must come from the same config`,
        );
      }
      out[key] = tf.tidy(() => (isA ? tf.concat([t, init], 0) : tf.concat([t, tf.neg(init)], 1)));
    }
  } catch (e) {
    tf.dispose(Object.values(out));
    throw e;
  }
  if (dropped.length > 0) {
    warn(
      `The converted adapter holds only lora_A / lora_B weights, as PEFT's; left out: ${dropped.join(', ')}. The base model with the converted adapter does not reproduce those.`,
    );
  }
  return out;
}

/**
 * The config PEFT writes for a converted adapter: `init_lora_weights: true`, r doubled, α doubled
 * (×√2 with rsLoRA, which keeps α/√r), every rank and alpha pattern doubled.
 *
 * @example
 * ```ts
 * loraConfigToJson(convertedLoraConfig(peft.peftConfig.get('default')!)); // r 16 → 32, lora_alpha 32 → 64
 * ```
 */
export function convertedLoraConfig(config: LoraConfig): LoraConfig {
  const double = (p: Record<string, number>) => Object.fromEntries(Object.entries(p).map(([k, v]) => [k, 2 * v]));
  return loraConfig({
    ...config,
    initLoraWeights: true,
    r: config.r * 2,
    loraAlpha: config.useRslora ? config.loraAlpha * Math.SQRT2 : config.loraAlpha * 2,
    rankPattern: double(config.rankPattern),
    alphaPattern: double(config.alphaPattern),
  });
}
