/**
 * How PEFT names an adapter's tensors in `adapter_model.safetensors` (`get_peft_model_state_dict`,
 * the adapter name removed): the one place `@lora/core` (and the CLI) spell those names.
 */

/** The prefix PEFT gives the user's model in saved keys: `base_model.model.<module path>.<suffix>`. */
export const PEFT_KEY_PREFIX = 'base_model.model.';

/** The suffixes of one module's adapter tensors, after `base_model.model.<path>.`. */
export const PEFT_SUFFIX = {
  loraA: 'lora_A.weight',
  loraB: 'lora_B.weight',
  loraBBias: 'lora_B.bias',
  embeddingA: 'lora_embedding_A',
  embeddingB: 'lora_embedding_B',
  magnitude: 'lora_magnitude_vector',
  tokens: 'token_adapter.trainable_tokens_delta',
  baseBias: 'base_layer.bias',
} as const;

/** The suffixes of the tensors a LoRA module owns in an adapter file: its factors, lora_B's bias, DoRA's magnitude. */
export const LORA_MODULE_SUFFIXES: readonly string[] = [
  PEFT_SUFFIX.loraA,
  PEFT_SUFFIX.loraB,
  PEFT_SUFFIX.loraBBias,
  PEFT_SUFFIX.embeddingA,
  PEFT_SUFFIX.embeddingB,
  PEFT_SUFFIX.magnitude,
];

const LORA_MODULE_KEY = new RegExp(
  `^base_model\\.model\\.(.+)\\.(${LORA_MODULE_SUFFIXES.map((x) => x.replaceAll('.', '\\.')).join('|')})$`,
);

/**
 * The module path a LoRA tensor's key belongs to (`base_model.model.<path>.lora_A.weight` → `<path>`), or
 * undefined for other keys (modules_to_save copies, token rows, saved embedding layers).
 *
 * @example
 * ```ts
 * loraModuleOfKey('base_model.model.layers.0.q_proj.lora_B.bias'); // 'layers.0.q_proj'
 * ```
 */
export function loraModuleOfKey(key: string): string | undefined {
  return LORA_MODULE_KEY.exec(key)?.[1];
}

/**
 * The saved key of a module's tensor: `base_model.model.<path>.<suffix>`.
 *
 * @example
 * ```ts
 * peftKey('model.layers.0.self_attn.q_proj', PEFT_SUFFIX.loraA); // 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
 * ```
 */
export function peftKey(path: string, suffix: string): string {
  return `${PEFT_KEY_PREFIX}${path}.${suffix}`;
}

/** The keys of a module's A and B: `lora_embedding_A/B` for an embedding, `lora_A/B.weight` otherwise. */
export function loraFactorKeys(path: string, embedding: boolean): [string, string] {
  return embedding
    ? [peftKey(path, PEFT_SUFFIX.embeddingA), peftKey(path, PEFT_SUFFIX.embeddingB)]
    : [peftKey(path, PEFT_SUFFIX.loraA), peftKey(path, PEFT_SUFFIX.loraB)];
}

/**
 * The tensors of an adapter file that belong to one module (`base_model.model.<path>.…`).
 *
 * @example
 * ```ts
 * Object.keys(moduleTensors(adapter.tensors, 'lin0')); // ['base_model.model.lin0.lora_A.weight', 'base_model.model.lin0.lora_B.weight']
 * ```
 */
export function moduleTensors<T>(tensors: Record<string, T>, path: string): Record<string, T> {
  const prefix = `${PEFT_KEY_PREFIX}${path}.`;
  return Object.fromEntries(Object.entries(tensors).filter(([k]) => k.startsWith(prefix)));
}

/** The kind of layer an adapter wraps, as its tensors tell: convolutions by their kernel's rank. */
export type AdapterTargetKind = 'linear' | 'embedding' | 'conv1d' | 'conv2d' | 'conv3d';

const FACTOR_A = /^base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)$/;
const TOKEN_ROWS = /^base_model\.model\.(.+)\.token_adapter\.trainable_tokens_delta$/;

/**
 * The LoRA-wrapped module paths an adapter file holds, with the kind of layer each is (`lora_A` of
 * rank 2: Linear; 3, 4, 5: Conv1d, Conv2d, Conv3d; `lora_embedding_A`: Embedding).
 *
 * @example
 * ```ts
 * adapterTargets(tensors); // Map { 'embed' => 'embedding', 'conv' => 'conv2d', 'lin' => 'linear' }
 * ```
 */
export function adapterTargets(tensors: Record<string, { rank: number }>): Map<string, AdapterTargetKind> {
  const out = new Map<string, AdapterTargetKind>();
  const convs: Record<number, AdapterTargetKind> = { 3: 'conv1d', 4: 'conv2d', 5: 'conv3d' };
  for (const [key, t] of Object.entries(tensors)) {
    const m = FACTOR_A.exec(key);
    if (m) out.set(m[1] as string, m[2] === PEFT_SUFFIX.embeddingA ? 'embedding' : (convs[t.rank] ?? 'linear'));
  }
  return out;
}

/** The module paths an adapter file holds trainable-token rows for (`<path>.token_adapter.trainable_tokens_delta`). */
export function tokenTargets(tensors: Record<string, unknown>): string[] {
  return Object.keys(tensors).flatMap((k) => TOKEN_ROWS.exec(k)?.[1] ?? []);
}

/**
 * Every module path whose weight merging an adapter changes: its LoRA targets and its trainable-token layers.
 *
 * @example
 * ```ts
 * mergedModulePaths(adapter.tensors); // ['model.layers.0.self_attn.q_proj', …, 'model.embed_tokens']
 * ```
 */
export function mergedModulePaths(tensors: Record<string, { rank: number }>): string[] {
  return [...new Set([...adapterTargets(tensors).keys(), ...tokenTargets(tensors)])];
}

/**
 * The base weights an adapter file replaces outright, by the base checkpoint's names (the saved key
 * without `base_model.model.`, `base_layer.` removed): the trained copies of `modules_to_save`, the
 * biases trained with the adapter (`bias: 'all' | 'lora_only'`) and saved embedding layers — every
 * tensor that is neither a LoRA factor, lora_B's bias, DoRA's magnitude nor trainable-token rows. Merging
 * the adapter writes each of them in place of the base's tensor, as PEFT's `merge_and_unload` leaves the
 * trained module in the model. Maps the base name to the adapter key.
 *
 * @example
 * ```ts
 * replacedBaseWeights(tensors); // Map { 'score.weight' => 'base_model.model.score.weight', 'q.bias' => 'base_model.model.q.base_layer.bias' }
 * ```
 */
export function replacedBaseWeights(tensors: Record<string, unknown>): Map<string, string> {
  const out = new Map<string, string>();
  for (const key of Object.keys(tensors)) {
    if (!key.startsWith(PEFT_KEY_PREFIX) || loraModuleOfKey(key) !== undefined || TOKEN_ROWS.test(key)) continue;
    out.set(key.slice(PEFT_KEY_PREFIX.length).replace(/\.base_layer\.(?=[^.]+$)/, '.'), key);
  }
  return out;
}
