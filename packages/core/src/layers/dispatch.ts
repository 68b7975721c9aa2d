import { Conv1d, Conv2d, Embedding, Linear, type Module, TransposedLinear } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import { Registry } from '../registry';
import type { AdapterSettings } from './adapter-settings';
import { LoraConv } from './lora-conv';
import { LoraEmbedding } from './lora-embedding';
import { LoraLinear } from './lora-linear';
import type { TunerLayer } from './tuner-layer';
import { LoraConfigError } from '../errors';

/** What a dispatcher is asked with: one target module of the user's model and the adapter for it. */
export interface LoraDispatchContext {
  /** The target's path in the user's model. */
  path: string;
  adapterName: string;
  /** The module to wrap (a Linear, an Embedding, a quantized layer of a method package…). */
  target: Module;
  /** The adapter's config. */
  config: LoraConfig;
  /** What the config resolves to on this module (r and α after the patterns; fan_in_fan_out as the config says). */
  settings: AdapterSettings;
}

/**
 * Wraps one target module in a LoRA layer, or returns null when it does not handle that kind of
 * module (PEFT's `dispatch_default`, `dispatch_bnb_4bit`…). The layer it returns has the adapter
 * already (built with `ctx.settings` and `ctx.config`), so usually it is `new MyLoraLayer(target,
 * ctx.adapterName, ctx.settings, ctx.config)` for a class extending `LoraLayerBase`. A dispatcher
 * that corrects a setting (fan_in_fan_out) stores the corrected value in the layer's settings:
 * `getPeftModel` carries it over to the adapter's config, as PEFT does.
 */
export type LoraDispatcher = (ctx: LoraDispatchContext) => TunerLayer | null;

/**
 * The fan_in_fan_out a new LoRA layer on `base` gets, as PEFT's `dispatch_default`: a Linear never
 * has it, a TransposedLinear (transformers' `Conv1D`) always does; a config that says otherwise is
 * corrected with PEFT's warning.
 */
function correctFanInFanOut(base: Linear | TransposedLinear, fanInFanOut: boolean): boolean {
  if (base instanceof Linear && fanInFanOut) {
    console.warn(
      'fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False.',
    );
    return false;
  }
  if (base instanceof TransposedLinear && !fanInFanOut) {
    console.warn('fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.');
    return true;
  }
  return fanInFanOut;
}

/** PEFT's `dispatch_default`: Linear and TransposedLinear, Embedding, Conv1d and Conv2d. */
export const dispatchDefault: LoraDispatcher = ({ target, adapterName, settings, config }) => {
  if (target instanceof Linear || target instanceof TransposedLinear) {
    const fanInFanOut = correctFanInFanOut(target, settings.fanInFanOut);
    return new LoraLinear(target, adapterName, { ...settings, fanInFanOut }, config);
  }
  if (target instanceof Embedding) return new LoraEmbedding(target, adapterName, settings, config);
  if (target instanceof Conv1d || target instanceof Conv2d) return new LoraConv(target, adapterName, settings, config);
  return null;
};

const dispatchers = new Registry<LoraDispatcher>('a LoRA layer dispatcher');

/**
 * Registers a dispatcher: before `@lora/core`'s own (PEFT's `dispatch_default`), in the order
 * registered, each is asked to wrap a target module until one returns a layer. How a method
 * package lets `getPeftModel` wrap its own base layers (LoftQ's quantized Linear, say). A taken name
 * is an error unless `{ override: true }`; returns a function that takes the registration back.
 *
 * @example
 * ```ts
 * registerLoraDispatcher('nf4', ({ target, adapterName, settings, config }) =>
 *   target instanceof Nf4Linear ? new LoraNf4Linear(target, adapterName, settings, config) : null,
 * );
 * ```
 */
export function registerLoraDispatcher(
  name: string,
  dispatcher: LoraDispatcher,
  options: { override?: boolean } = {},
): () => void {
  if (typeof dispatcher !== 'function')
    throw new TypeError(
      `registerLoraDispatcher('${name}', dispatcher): dispatcher must be a function (ctx) => layer | null`,
    );
  return dispatchers.add(name, dispatcher, options);
}

/**
 * The LoRA layer for one target module: the first registered dispatcher that takes it, else
 * `@lora/core`'s; PEFT's error when none does.
 */
export function dispatchLoraLayer(ctx: LoraDispatchContext): TunerLayer {
  for (const dispatch of [...dispatchers.values(), dispatchDefault]) {
    const layer = dispatch(ctx);
    if (layer) return layer;
  }
  throw new LoraConfigError(
    `Target module ${ctx.path} (${ctx.target.constructor.name}) is not supported. Currently, only the following modules are supported: Linear, Embedding, Conv1d, Conv2d, TransposedLinear (transformers' Conv1D)` +
      `${dispatchers.names().length ? ` and what the registered dispatchers (${dispatchers.names().join(', ')}) take` : ''}; a method package adds others with registerLoraDispatcher.`,
  );
}
