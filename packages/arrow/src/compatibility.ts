import type { PeftModel } from '@lora/core';
import { ArrowError } from './errors';

/** What an expert holds on one module. */
interface ExpertModule {
  kind: string;
  base: string;
  r: number;
  a: string;
  b: string;
  useDora: boolean;
  loraBias: boolean;
}

/** Each module (by path) an adapter is on, with its rank and factor shapes. */
function modulesOf(model: PeftModel, adapter: string): Map<string, ExpertModule> {
  const out = new Map<string, ExpertModule>();
  for (const [path, layer] of model.loraLayers()) {
    const s = layer.settings.get(adapter);
    if (!s) continue;
    out.set(path, {
      kind: layer.kind,
      base: layer.baseLayer.constructor.name,
      r: s.r,
      a: `[${layer.factorA(adapter).shape.join(', ')}]`,
      b: `[${layer.factorB(adapter).shape.join(', ')}]`,
      useDora: s.useDora ?? false,
      loraBias: s.loraBias,
    });
  }
  return out;
}

const list = (names: Iterable<string>, max = 6) => {
  const all = [...names];
  return `[${all.slice(0, max).join(', ')}${all.length > max ? `, … (${all.length} in all)` : ''}]`;
};

/**
 * PEFT's `ensure_adapters_target_linear_layers_only` and `check_loaded_lora_compatibility_arrow`, on
 * every module: each adapter only on Linear-like layers (Linear, TransposedLinear, or a Linear-like
 * layer a registered dispatcher makes), as plain LoRA (no DoRA, no lora_B bias: Arrow routes B·A
 * alone); then, against the first adapter, the same rank and the same A and B shapes on every module,
 * and the same modules (PEFT compares the last module it meets and the modules' last names only).
 * Returns the modules, sorted, and the first module's rank.
 */
export function checkArrowExperts(model: PeftModel, adapters: string[]): { paths: string[]; r: number } {
  const modules = new Map(adapters.map((n) => [n, modulesOf(model, n)]));
  const offenders: string[] = [];
  for (const [name, mods] of modules)
    for (const [path, m] of mods)
      if (m.kind !== 'linear') offenders.push(`  - adapter '${name}' on module '${path}' of type ${m.base}`);
  if (offenders.length)
    throw new ArrowError(
      'layer-type',
      [
        "LoRA adapters must only target Linear-like layers (Linear, TransposedLinear (transformers' Conv1D), or a Linear-like layer a registered dispatcher wraps). Found:",
        ...offenders,
        'Arrow routes tokens through B·A of Linear experts: use adapters trained without these targets.',
      ].join('\n'),
      { adapter: offenders[0]?.match(/'([^']+)'/)?.[1] },
    );
  for (const [name, mods] of modules)
    for (const [path, m] of mods)
      if (m.useDora || m.loraBias)
        throw new ArrowError(
          'expert-kind',
          `adapter '${name}' uses ${m.useDora ? 'DoRA (use_dora)' : 'a lora_B bias (lora_bias)'} on '${path}': Arrow mixes the experts' B·A only, so it would route a different adapter than the one trained (PEFT routes it that way without a word). Use plain LoRA experts`,
          { adapter: name, module: path },
        );
  const [ref, ...rest] = adapters as [string, ...string[]];
  const refMods = modules.get(ref) as Map<string, ExpertModule>;
  if (refMods.size === 0)
    throw new ArrowError(
      'targets',
      `adapter '${ref}' adapts no module of the model: is it an adapter for this base model?`,
      {
        adapter: ref,
      },
    );
  for (const name of rest) {
    const mods = modules.get(name) as Map<string, ExpertModule>;
    for (const [path, m] of mods) {
      const want = refMods.get(path);
      if (!want) continue;
      if (m.r !== want.r)
        throw new ArrowError(
          'rank',
          `[${name}] rank mismatch: ${m.r} != ${want.r} (on '${path}'); every expert an Arrow router combines must have the same rank on each module as ${ref}: retrain ${name} with r=${want.r}, or leave it out`,
          { adapter: name, module: path },
        );
      if (m.a !== want.a || m.b !== want.b)
        throw new ArrowError(
          'shape',
          `[${name}] shape mismatch: (A ${m.a}, B ${m.b}) != (A ${want.a}, B ${want.b}) on '${path}' (${ref}'s); the experts must have the same factor shapes on every module`,
          { adapter: name, module: path },
        );
    }
    const missing = [...refMods.keys()].filter((p) => !mods.has(p)).sort();
    const extra = [...mods.keys()].filter((p) => !refMods.has(p)).sort();
    if (missing.length || extra.length)
      throw new ArrowError(
        'targets',
        [
          `[${name}] target_modules mismatch:`,
          `  this adapter -> ${list([...mods.keys()].sort())}`,
          `  reference   -> ${list([...refMods.keys()].sort())} (${ref})`,
          `${missing.length ? `${name} lacks ${list(missing)}` : ''}${missing.length && extra.length ? '; ' : ''}${extra.length ? `${name} also adapts ${list(extra)}` : ''}: every expert must adapt the same modules`,
        ].join('\n'),
        { adapter: name, module: missing[0] ?? extra[0] },
      );
  }
  const paths = [...refMods.keys()].sort();
  return { paths, r: (refMods.get(paths[0] as string) as ExpertModule).r };
}
