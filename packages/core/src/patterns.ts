/**
 * The regular expressions a config holds (target_modules, exclude_modules, modules_to_save,
 * rank_pattern / alpha_pattern keys, layers_pattern), matched with PEFT's semantics on a linear-time
 * engine: RE2 (the `re2js` port), so that no pattern an adapter file carries can hang a load.
 *
 * PEFT builds each regex from the config's string and calls Python's `re.fullmatch` or `re.match`; the
 * same strings are built here, and `re.fullmatch` becomes RE2's whole-input match, `re.match` a match
 * anchored at the start. Python-regex features RE2 lacks (backreferences, lookaround, atomic groups,
 * possessive quantifiers, conditionals) are refused with a {@link LoraConfigError} naming the field.
 */
import { RE2JS } from 're2js';
import { describeValue } from '@lora/tensor';
import { LoraConfigError } from './errors';

/** Python-regex constructs RE2 cannot run, each with the words an error uses for it. */
const UNSUPPORTED: [RegExp, string][] = [
  [/\\[1-9]|\(\?P=/, 'a backreference (\\1, (?P=name))'],
  [/\(\?<?[=!]/, 'a lookahead or lookbehind ((?=…), (?!…), (?<=…), (?<!…))'],
  [/\(\?>/, 'an atomic group ((?>…))'],
  [/[*+?}]\+/, 'a possessive quantifier (*+, ++, ?+)'],
  [/\(\?\(/, 'a conditional group ((?(1)…|…))'],
];

/** Python's `\Z` (end of input) is RE2's `\z`; Python has no `\z`, so nothing else changes meaning. */
function pythonToRe2(source: string): string {
  if (!source.includes('\\Z')) return source;
  let out = '';
  for (let i = 0; i < source.length; i++) {
    const c = source[i] as string;
    if (c === '\\' && i + 1 < source.length) {
      const next = source[++i] as string;
      out += next === 'Z' ? '\\z' : c + next;
    } else out += c;
  }
  return out;
}

const cache = new Map<string, RE2JS>();
const CACHE_SIZE = 512;

/**
 * Compiles a regex built from a config field's value. `field` names the field (PEFT's name) and
 * `value` the user's string, for the error; `source` is the full regex built around it.
 */
function compile(source: string, field: string, value: string): RE2JS {
  const hit = cache.get(source);
  if (hit) return hit;
  let re: RE2JS;
  try {
    re = RE2JS.compile(pythonToRe2(source));
  } catch (e) {
    const feature = UNSUPPORTED.find(([test]) => test.test(value))?.[1];
    const why = feature
      ? `it uses ${feature}, a Python-regex feature the linear-time matcher (RE2) does not have; rewrite the pattern without it`
      : `it is not a valid regular expression (${(e as Error).message.replace(/^error parsing regexp: /, '')}); fix the pattern, or give a list of module names instead`;
    throw new LoraConfigError(`${field} ${describeValue(value)} cannot be used: ${why}`, { field });
  }
  if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value as string);
  cache.set(source, re);
  return re;
}

/** Python's `re.fullmatch(pattern, key)`: the whole key matches. */
export function fullMatch(pattern: string, key: string, field: string): boolean {
  return compile(pattern, field, pattern).matches(key);
}

/**
 * PEFT's `get_pattern_key`: the first pattern (in order) for which `re.match(rf"(.*\.)?({p})$", key)`
 * succeeds, i.e. the pattern matches the whole key or its last dot-separated segments.
 */
export function firstPatternKey(patterns: Iterable<string>, key: string, field: string): string | undefined {
  for (const p of patterns) if (compile(`(.*\\.)?(${p})$`, field, p).matcher(key).lookingAt()) return p;
  return undefined;
}

/** PEFT's modules_to_save exclusion: `re.match(rf"(^|.*\.){m}($|\..*)", key)`. */
export function matchesModuleName(name: string, key: string, field: string): boolean {
  return compile(`(^|.*\\.)${name}($|\\..*)`, field, name).matcher(key).lookingAt();
}

/**
 * The layer index in a module path, as PEFT's `check_target_module_exists` reads it for
 * `layers_to_transform`: the first number after `layers_pattern` (any segment when there is none).
 */
export function layerIndexOf(key: string, patterns: readonly string[] | null, field = 'layers_pattern'): number | null {
  const sources =
    patterns === null
      ? [['.*?\\.[^.]*\\.(?P<idx>\\d+)\\.', '']]
      : patterns.map((p) => [`(?:^|.*?\\.)${p}\\.(?P<idx>\\d+)\\.`, p]);
  for (const [source, value] of sources) {
    const m = compile(source as string, field, value as string).matcher(key);
    if (m.lookingAt()) return Number.parseInt(m.group('idx') as string, 10);
  }
  return null;
}

/**
 * Checks that every regex a config would build compiles, so that a bad pattern fails when the config
 * is made, not halfway through wrapping a model.
 */
export function checkPatterns(fields: {
  targetModules: string[] | string | null;
  excludeModules: string[] | string | null;
  modulesToSave: string[] | null;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  layersPattern: string[] | string | null;
}): void {
  const t = fields.targetModules;
  if (typeof t === 'string' && t.toLowerCase() !== 'all-linear') fullMatch(t, '', 'target_modules');
  if (typeof fields.excludeModules === 'string') fullMatch(fields.excludeModules, '', 'exclude_modules');
  for (const m of fields.modulesToSave ?? []) matchesModuleName(m, '', 'modules_to_save');
  for (const k of Object.keys(fields.rankPattern)) firstPatternKey([k], '', 'rank_pattern');
  for (const k of Object.keys(fields.alphaPattern)) firstPatternKey([k], '', 'alpha_pattern');
  const lp = fields.layersPattern;
  if (lp !== null && lp.length > 0) layerIndexOf('', typeof lp === 'string' ? [lp] : lp);
}
