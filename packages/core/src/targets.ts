import { Linear, type Module, TransposedLinear } from '@lora/nn';
import type { LoraConfig } from './lora-config';
import { LoraLayerBase } from './layers/lora-layer';
import { LoraLinear } from './layers/lora-linear';
import { editDistance } from './errors';
import { fullMatch, layerIndexOf, matchesModuleName } from './patterns';

/** A target module that matched no module, or a configuration that matched nothing: PEFT's `NoMatchingPeftModuleError`. */
export class TargetModuleError extends Error {
  override readonly name = 'TargetModuleError';
}

function suffixMatch(list: string[], key: string): boolean {
  return list.some((t) => key === t || key.endsWith(`.${t}`));
}

/** The layer index in a module path, as PEFT extracts it for `layers_to_transform`. */
function layerIndex(key: string, pattern: string[] | string | null): number | null {
  const patterns = pattern === null || pattern.length === 0 ? null : typeof pattern === 'string' ? [pattern] : pattern;
  return layerIndexOf(key, patterns);
}

/** Why a module path is or is not a target (PEFT's `check_target_module_exists`). */
export function matchModule(config: LoraConfig, key: string): 'targeted' | 'excluded' | 'unmatched' {
  const ex = config.excludeModules;
  if (ex !== null) {
    if (typeof ex === 'string' ? fullMatch(ex, key, 'exclude_modules') : suffixMatch(ex, key)) return 'excluded';
  }
  if (config.modulesToSave?.some((m) => matchesModuleName(m, key, 'modules_to_save'))) return 'excluded';
  const t = config.targetModules;
  if (t === null) return 'unmatched';
  if (typeof t === 'string') return fullMatch(t, key, 'target_modules') ? 'targeted' : 'unmatched';
  if (t.includes(key)) return 'targeted';
  if (!t.some((s) => key.endsWith(`.${s}`))) return 'unmatched';
  const ltt = config.layersToTransform;
  if (ltt === null || (Array.isArray(ltt) && ltt.length === 0)) return 'targeted';
  const idx = layerIndex(key, config.layersPattern);
  if (idx === null) return 'unmatched';
  return (typeof ltt === 'number' ? idx === ltt : ltt.includes(idx)) ? 'targeted' : 'unmatched';
}

/** What {@link resolveTargets} found. */
export interface ResolvedTargets {
  /** Paths of the modules that would be wrapped, in `namedModules()` order. */
  targeted: string[];
  excluded: string[];
}

/**
 * A dry run of target selection: the module paths a config wraps in `model`, with PEFT's rules
 * (list = suffix match on dot boundaries, string = full regex match, `'all-linear'`, excludes,
 * `layers_to_transform`/`layers_pattern`). Fails as PEFT does when nothing matches, naming the
 * closest module names.
 *
 * @example
 * ```ts
 * resolveTargets(model, loraConfig({ targetModules: ['q_proj', 'v_proj'] })).targeted;
 * // ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', …]
 * ```
 */
export function resolveTargets(model: Module, config: LoraConfig): ResolvedTargets {
  const modules = [...model.namedModules()].filter(([k]) => k !== '');
  let effective = config;
  if (typeof config.targetModules === 'string' && config.targetModules.toLowerCase() === 'all-linear') {
    // as PEFT's _maybe_include_all_linear_layers: every Linear and TransposedLinear (transformers' Conv1D),
    // and LoRA layers over them (a second adapter), except the output layer (the one named lm_head, as
    // transformers' output embeddings) and the modules inside LoRA layers (their base_layer, lora_A, …)
    const lora = modules.filter(([, m]) => m instanceof LoraLayerBase).map(([k]) => k);
    const linears = modules
      .filter(([, m]) => m instanceof Linear || m instanceof TransposedLinear || m instanceof LoraLinear)
      .map(([k]) => k)
      .filter((k) => !lora.some((l) => k.startsWith(`${l}.`)));
    effective = { ...config, targetModules: linears.filter((k) => k !== 'lm_head' && !k.endsWith('.lm_head')) };
  }
  return matchPaths(
    modules.map(([k]) => k),
    effective,
    config,
  );
}

/**
 * {@link resolveTargets} on module paths alone (what a checkpoint's tensor names give, without a model):
 * the paths the config targets and excludes, or PEFT's error when it targets none. `'all-linear'` needs
 * the modules' classes, so it is resolved by {@link resolveTargets} only; here it matches nothing.
 *
 * @example
 * ```ts
 * resolveTargetPaths(['layers.0.q_proj', 'layers.0.k_proj'], loraConfig({ targetModules: ['q_proj'] })).targeted;
 * // ['layers.0.q_proj']
 * ```
 */
export function resolveTargetPaths(paths: string[], config: LoraConfig): ResolvedTargets {
  return matchPaths(paths, config, config);
}

/** Matches `paths` with `effective` (all-linear resolved); errors are worded from `config`, as the user wrote it. */
function matchPaths(paths: string[], effective: LoraConfig, config: LoraConfig): ResolvedTargets {
  const modules = paths.filter((k) => k !== '').map((k) => [k] as const);
  const targeted: string[] = [];
  const excluded: string[] = [];
  for (const [key] of modules) {
    const r = matchModule(effective, key);
    if (r === 'targeted') targeted.push(key);
    else if (r === 'excluded') excluded.push(key);
  }
  if (targeted.length === 0) {
    const t = config.targetModules;
    if (excluded.length > 0 && modules.length === excluded.length) {
      throw new TargetModuleError(
        'All modules were excluded. This is likely unintended. Check your `target_modules`, `exclude_modules` and `modules_to_save` configuration.',
      );
    }
    if (!t || (Array.isArray(t) && t.length === 0))
      throw new TargetModuleError(
        'No `target_modules` passed but also no `target_parameters` found. Please check the values for these arguments.',
      );
    const names = [...new Set(modules.map(([k]) => k.split('.').at(-1) as string))].filter((n) => !/^\d+$/.test(n));
    const wanted = typeof t === 'string' ? [t] : t;
    const close = wanted.flatMap((w) =>
      names
        .map((n) => [n, editDistance(w.slice(0, 200), n)] as const)
        .sort((a, b) => a[1] - b[1])
        .slice(0, 3)
        .map(([n]) => n),
    );
    throw new TargetModuleError(
      `Target modules ${JSON.stringify(wanted)} not found in the base model. Please check the target modules and try again.` +
        (config.layersToTransform !== null
          ? ` Note: You specified 'layers_to_transform': ${JSON.stringify(config.layersToTransform)}.`
          : '') +
        (config.layersPattern !== null
          ? ` You also specified 'layers_pattern': ${JSON.stringify(config.layersPattern)}.`
          : '') +
        ` Close matches: ${[...new Set(close)].join(', ')}. Set targetModules to names from model.namedModules().`,
    );
  }
  return { targeted, excluded };
}
