import * as tf from '@tensorflow/tfjs-core';
import {
  type SourceFactors,
  type WeightedAdapterOptions,
  combineModuleFactors,
  planCombination,
} from '../combination/adapter-combination';
import { moduleScaling } from '../lora-config';
import type { AdapterFiles } from './merge-weights';
import { type AdapterTargetKind, adapterTargets, loraFactorKeys } from './peft-keys';
import { matchModule } from '../targets';

/** Options of {@link combineAdapters}: PEFT's combination options, plus labels, progress and warnings. */
export interface CombineAdaptersOptions extends WeightedAdapterOptions {
  /** How error messages name the adapters (default `adapter 1`, `adapter 2`, …), e.g. their directories. */
  names?: string[];
  /** Called after each module is combined, with its path. */
  onProgress?: (done: number, total: number, path: string) => void;
  /** Where warnings go (default `console.warn`). */
  warn?: (message: string) => void;
}

function factorKeys(path: string, kind: AdapterTargetKind): [string, string] {
  return loraFactorKeys(path, kind === 'embedding');
}

/**
 * Combines adapters given as files (config + tensors under PEFT's saved names) into one adapter in
 * the same form, without a base model: what PEFT's `add_weighted_adapter` followed by
 * `save_pretrained` of the new adapter writes, with the same math as {@link addWeightedAdapter}
 * (Linear, Embedding, Conv1d, Conv2d; rank and alpha patterns; rsLoRA; fan_in_fan_out). The result
 * targets the modules that the adapters have and the combined config targets (the first adapter's
 * config with the union of the target modules; modules it leaves out are dropped with a warning, as
 * PEFT drops them). The caller owns the returned tensors; the inputs are left as they are.
 *
 * What needs the base model is refused or left out, with a warning: a first adapter with
 * `bias: 'all' | 'lora_only'` fails as in PEFT (two adapters with biases); its `modules_to_save` are
 * dropped (PEFT's combined adapter holds fresh copies of the base modules there, which change
 * nothing); DoRA magnitudes and `lora_bias` biases are not combined (PEFT combines A and B only),
 * so the result is plain LoRA.
 *
 * @example
 * ```ts
 * const mix = await combineAdapters([sql, chat], [0.7, 0.3], { combinationType: 'ties_svd', density: 0.5, svdRank: 16 });
 * const weights = await serializeSafetensors(mix.tensors, { metadata: { format: 'pt' } });
 * const config = loraConfigToJson(mix.config);
 * tf.dispose(Object.values(mix.tensors));
 * ```
 */
export async function combineAdapters(
  adapters: AdapterFiles[],
  weights: number[],
  options: CombineAdaptersOptions = {},
): Promise<AdapterFiles> {
  const label = (i: number) => options.names?.[i] ?? `adapter ${i + 1}`;
  const warn = options.warn ?? console.warn;
  const configs = adapters.map((a) => a.config);
  const plan = planCombination(configs, weights, options, label);
  const first = configs[0] as AdapterFiles['config'];
  if (first.bias !== 'none')
    throw new Error(
      `LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all adapters. (${label(0)} has bias '${first.bias}', which the combined adapter would copy)`,
    );
  if (first.trainableTokenIndices)
    throw new Error(`${label(0)} has trainable_token_indices; combining trainable tokens is not supported`);
  // PEFT counts the wrapped modules; without the model, the names listed by more than one adapter
  const saved = configs.flatMap((c) => [...new Set(c.modulesToSave ?? [])]);
  const shared = new Set(saved.filter((m, i) => saved.indexOf(m) !== i));
  if (shared.size)
    throw new Error(
      `Cannot add weighted adapters if they target the same module with modules_to_save, but found ${shared.size} such instance(s). (${[...shared].join(', ')})`,
    );
  if (first.modulesToSave?.length) {
    warn(
      `modules_to_save ${JSON.stringify(first.modulesToSave)} of ${label(0)} are left out: PEFT's combined adapter would hold untrained copies of those base modules there`,
    );
    plan.config.modulesToSave = null;
  }
  for (const [i, c] of configs.entries()) {
    if (c.useDora)
      warn(
        `${label(i)} is a DoRA adapter: its magnitudes are not combined (PEFT combines A and B only); the result is plain LoRA`,
      );
    if (c.loraBias) warn(`${label(i)} has lora_bias: its lora_B biases are not combined (PEFT combines A and B only)`);
  }
  // every module some adapter has, in the adapters' order, with its layer kind
  const modules = new Map<string, AdapterTargetKind>();
  for (const [i, a] of adapters.entries()) {
    for (const [path, kind] of adapterTargets(a.tensors)) {
      const seen = modules.get(path);
      if (seen && seen !== kind)
        throw new Error(
          `'${path}' is a ${seen} layer in one adapter and a ${kind} layer in ${label(i)}; were they trained on the same base model?`,
        );
      modules.set(path, kind);
    }
  }
  const paths = [...modules.keys()].filter((p) => matchModule(plan.config, p) === 'targeted');
  const dropped = [...modules.keys()].filter((p) => !paths.includes(p));
  if (dropped.length)
    warn(
      `the combined config (the first adapter's, target_modules ${JSON.stringify(plan.config.targetModules)}) does not target ${dropped.join(', ')}; left out, as PEFT leaves them out`,
    );
  if (paths.length === 0)
    throw new Error(
      "the combined adapter targets none of the adapters' modules; check the adapters' target_modules, layers_to_transform and exclude_modules",
    );
  const out: Record<string, tf.Tensor> = {};
  try {
    for (const [done, path] of paths.entries()) {
      const kind = modules.get(path) as AdapterTargetKind;
      const [aKey, bKey] = factorKeys(path, kind);
      const sources: SourceFactors[] = [];
      for (const [i, adapter] of adapters.entries()) {
        const a = adapter.tensors[aKey];
        if (!a) continue;
        const b = adapter.tensors[bKey];
        if (!b) throw new Error(`${label(i)} has '${aKey}' but no '${bKey}'; it is incomplete`);
        const { r, scaling } = moduleScaling(adapter.config, path);
        if (a.shape[0] !== r)
          throw new Error(
            `${label(i)}: '${aKey}' has rank ${a.shape[0]} but its config gives '${path}' r=${r}; the config does not belong to these tensors`,
          );
        sources.push({ a, b, scaling, weight: weights[i] as number });
      }
      const { a, b } = await combineModuleFactors(path, sources, plan);
      out[aKey] = a;
      out[bKey] = b;
      options.onProgress?.(done + 1, paths.length, path);
    }
  } catch (e) {
    tf.dispose(Object.values(out));
    throw e;
  }
  return { config: plan.config, tensors: out };
}
