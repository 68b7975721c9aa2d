import type { TunerLayer } from '../layers/tuner-layer';
import { Registry } from '../registry';
import { doraVariant } from './dora';
import type { LoraVariant, LoraVariantRequest } from './variant-types';
import { LoraConfigError } from '../errors';

export type { LoraVariant, LoraVariantRequest } from './variant-types';

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
    throw new LoraConfigError(
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
