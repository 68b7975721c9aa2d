/**
 * PEFT's `_find_minimal_target_modules`: the fewest name suffixes that match every target module and no
 * other module, used when an adapter config would list many paths. Suffixes end on dot boundaries;
 * targets are visited sorted by their suffix lists (shortest suffix first), as PEFT does, so the result
 * is the same set. Returned sorted (PEFT returns a Python set, which JSON writes in hash order).
 *
 * @example
 * ```ts
 * findMinimalTargetModules(
 *   ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj'],
 *   ['model.layers.0.self_attn.k_proj', 'model.layers.1.self_attn.k_proj'],
 * ); // ['q_proj']
 * ```
 */
export function findMinimalTargetModules(
  targetModules: Iterable<string>,
  otherModuleNames: Iterable<string>,
): string[] {
  const targets = [...new Set(targetModules)];
  if (targets.length === 0) throw new Error('target_modules should be a list or set of strings.');
  if (targets.includes('')) throw new Error('target_modules should not contain an empty string.');
  const others = new Set(otherModuleNames);
  if (targets.some((t) => others.has(t)))
    throw new Error('target_modules and other_module_names contain common elements, this should not happen');
  // shortest suffix first: 'a.b.c' -> ['c', 'b.c', 'a.b.c']
  const suffixes = (s: string) => {
    const parts = s.split('.');
    return parts.map((_, i) => parts.slice(i).join('.')).reverse();
  };
  const otherSuffixes = new Set([...others].flatMap(suffixes));
  const compare = (a: string[], b: string[]) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const x = a[i] as string;
      const y = b[i] as string;
      if (x !== y) return x < y ? -1 : 1;
    }
    return a.length - b.length;
  };
  const items = targets
    .map((t) => ({ item: t, suffixes: suffixes(t) }))
    .sort((a, b) => compare(a.suffixes, b.suffixes));
  const required = new Set<string>();
  for (const { item, suffixes: list } of items) {
    for (const suffix of list) {
      if (required.has(suffix) || otherSuffixes.has(suffix)) continue;
      if (![...required].some((r) => item.endsWith(`.${r}`))) {
        required.add(suffix);
        break;
      }
    }
  }
  return required.size === 0 ? targets.sort() : [...required].sort();
}
