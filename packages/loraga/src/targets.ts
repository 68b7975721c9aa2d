import {
  DEFAULT_TARGET_MODULES,
  type LoraConfig,
  LoraConfigError,
  TargetModuleError,
  resolveTargets,
} from '@lora/core';
import { Linear, type Module, TransposedLinear } from '@lora/nn';

/** A layer whose weight LoRA-GA takes the gradient of: a Linear or a TransposedLinear (transformers' Conv1D). */
export interface LoraGaTarget {
  /** Module path in the model. */
  path: string;
  module: Linear | TransposedLinear;
}

/**
 * PEFT's `quant_state` test, duck-typed: a quantized layer (as `@lora/loftq`'s) carries its
 * quantization state as `quantState` (or PEFT's own name).
 */
function isQuantized(module: Module): boolean {
  const m = module as unknown as Record<string, unknown>;
  return m.quantState !== undefined || m.quant_state !== undefined;
}

/** The config's target modules, or PEFT's defaults for the model's `config.modelType` (PEFT's `preprocess_loraga` fills them in the same way). */
function withTargetModules(model: Module, config: LoraConfig): LoraConfig {
  if (config.targetModules !== null) return config;
  const c = (model as { config?: { modelType?: unknown; model_type?: unknown } }).config;
  const type = c?.modelType ?? c?.model_type;
  const defaults = typeof type === 'string' ? DEFAULT_TARGET_MODULES[type] : undefined;
  if (!defaults)
    throw new LoraConfigError(
      `Please specify \`target_modules\` in \`peft_config\`: targetModules is not set and ${
        type === undefined
          ? `the model (${model.constructor.name}) has no config.modelType to choose defaults by`
          : `model type ${JSON.stringify(type)} has no default target modules`
      }. Set targetModules to module names from model.namedModules(), e.g. ['q_proj', 'v_proj']`,
      { field: 'targetModules' },
    );
  return { ...config, targetModules: [...defaults] };
}

/**
 * The layers LoRA-GA estimates gradients for, as PEFT 0.21's `get_target_modules`: the modules the
 * config targets (PEFT's matching rules; `'all-linear'` too, which PEFT's LoRA-GA does not resolve)
 * that are Linear or TransposedLinear. Other targeted kinds (Embedding, convolutions) are left out
 * silently, as in PEFT: getPeftModel gives them the default init. A quantized target is an error,
 * and so is a config that leaves no supported layer, both worded as PEFT's.
 */
export function loraGaTargets(model: Module, config: LoraConfig): LoraGaTarget[] {
  const full = withTargetModules(model, config);
  let targeted: string[];
  let why = '';
  try {
    targeted = resolveTargets(model, full).targeted;
  } catch (e) {
    if (!(e instanceof TargetModuleError)) throw e;
    targeted = [];
    why = ` (${e.message})`;
  }
  const targets: LoraGaTarget[] = [];
  const skipped: string[] = [];
  for (const path of targeted) {
    const module = model.getSubmodule(path);
    if (isQuantized(module))
      throw new LoraConfigError(
        `LoRA-GA does not support quantized models. Found quantized module: '${path}'. LoRA-GA requires full-precision gradients during preprocessing.`,
        { field: 'targetModules' },
      );
    if (module instanceof Linear || module instanceof TransposedLinear) targets.push({ path, module });
    else skipped.push(`${path} (${module.constructor.name})`);
  }
  if (targets.length === 0)
    throw new LoraConfigError(
      'No supported layers found for LoRA-GA initialization. LoRA-GA only supports nn.Linear and Conv1D layers. ' +
        'Please ensure your model contains at least one of these layer types in target_modules.' +
        (skipped.length ? ` The targets are ${skipped.join(', ')}.` : why),
      { field: 'targetModules' },
    );
  return targets;
}
