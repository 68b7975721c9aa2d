import { type LoraConfig, loraConfig } from '../lora-config';

/** Per-adapter settings of a LoRA layer: what the adapter's config resolves to on one module. */
export interface AdapterSettings {
  r: number;
  loraAlpha: number;
  loraDropout: number;
  useRslora: boolean;
  initLoraWeights: boolean | string;
  loraBias: boolean;
  /**
   * The base weight is stored `[in, out]` (PEFT's `fan_in_fan_out`): true exactly when the base layer is
   * a `TransposedLinear` (transformers' `Conv1D`). `PeftModel` sets it as PEFT does, with PEFT's warning
   * when the config says otherwise.
   */
  fanInFanOut: boolean;
  /** Weight-decomposed LoRA: a trained magnitude per output unit (PEFT's `use_dora`). */
  useDora?: boolean;
  /** The layer's path in the user's model (set by `PeftModel`; what a registered init such as EVA looks statistics up by). */
  path?: string;
}

/**
 * The config an adapter's settings stand for, when a layer is built directly (`new LoraLinear(base,
 * name, settings)`) rather than by `getPeftModel`, which passes the adapter's own config: PEFT's
 * defaults with the settings' values. Not validated again: the layer checks what it uses.
 */
export function configFromSettings(s: AdapterSettings): LoraConfig {
  return {
    ...loraConfig(),
    r: s.r,
    loraAlpha: s.loraAlpha,
    loraDropout: s.loraDropout,
    useRslora: s.useRslora,
    initLoraWeights: s.initLoraWeights as LoraConfig['initLoraWeights'],
    loraBias: s.loraBias,
    fanInFanOut: s.fanInFanOut,
    useDora: s.useDora ?? false,
  };
}
