/**
 * PEFT's `LoraConfig`, in camelCase, with PEFT's defaults, validation and JSON form
 * (`adapter_config.json`, snake_case).
 */
import { describeValue } from '@lora/tensor';
import { LoraConfigError, editDistance } from './errors';
import { checkPatterns, firstPatternKey } from './patterns';

/** `init_lora_weights` values. `'loftq' | 'eva' | 'lora_ga'` come from the method packages' registry. */
export type InitLoraWeights =
  | boolean
  | 'gaussian'
  | 'pissa'
  | `pissa_niter_${number}`
  | 'olora'
  | 'orthogonal'
  | 'loftq'
  | 'eva'
  | 'lora_ga';

/** A LoRA configuration. Every field has PEFT 0.21's default. */
export interface LoraConfig {
  peftType: 'LORA';
  taskType: string | null;
  baseModelNameOrPath: string | null;
  revision: string | null;
  inferenceMode: boolean;
  r: number;
  /** A list: suffix match on module paths. A string: a regular expression matched against the full path. `'all-linear'`: every Linear and TransposedLinear (transformers' Conv1D) but the output layer. */
  targetModules: string[] | string | null;
  excludeModules: string[] | string | null;
  loraAlpha: number;
  loraDropout: number;
  fanInFanOut: boolean;
  bias: 'none' | 'all' | 'lora_only';
  useRslora: boolean;
  modulesToSave: string[] | null;
  initLoraWeights: InitLoraWeights;
  layersToTransform: number[] | number | null;
  layersPattern: string[] | string | null;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  useDora: boolean;
  loraBias: boolean;
  trainableTokenIndices: number[] | Record<string, number[]> | null;
  /** Keys read from a file that this version does not know: kept and written back. */
  extra: Record<string, unknown>;
}

const TASK_TYPES = ['SEQ_CLS', 'SEQ_2_SEQ_LM', 'CAUSAL_LM', 'TOKEN_CLS', 'QUESTION_ANS', 'FEATURE_EXTRACTION'];

/** PEFT's field names in adapter_config.json, for each of ours. */
const SNAKE: Record<Exclude<keyof LoraConfig, 'extra'>, string> = {
  peftType: 'peft_type',
  taskType: 'task_type',
  baseModelNameOrPath: 'base_model_name_or_path',
  revision: 'revision',
  inferenceMode: 'inference_mode',
  r: 'r',
  targetModules: 'target_modules',
  excludeModules: 'exclude_modules',
  loraAlpha: 'lora_alpha',
  loraDropout: 'lora_dropout',
  fanInFanOut: 'fan_in_fan_out',
  bias: 'bias',
  useRslora: 'use_rslora',
  modulesToSave: 'modules_to_save',
  initLoraWeights: 'init_lora_weights',
  layersToTransform: 'layers_to_transform',
  layersPattern: 'layers_pattern',
  rankPattern: 'rank_pattern',
  alphaPattern: 'alpha_pattern',
  useDora: 'use_dora',
  loraBias: 'lora_bias',
  trainableTokenIndices: 'trainable_token_indices',
};

/** Fields PEFT 0.21 writes that this port keeps at their defaults (written back as PEFT writes them). */
const PEFT_DEFAULTS: Record<string, unknown> = {
  alora_invocation_tokens: null,
  arrow_config: null,
  corda_config: null,
  ensure_weight_tying: false,
  eva_config: null,
  kasa_config: null,
  layer_replication: null,
  loftq_config: {},
  lora_ga_config: null,
  megatron_config: null,
  megatron_core: 'megatron.core',
  monteclora_config: null,
  qalora_group_size: 16,
  target_parameters: null,
  use_bdlora: null,
  use_qalora: false,
  velora_config: null,
};

export { LoraConfigError } from './errors';

/**
 * PEFT fields this port does not implement, which change the model when set (aLoRA, layer replication,
 * parameter targeting, QA-LoRA, …): a file that sets one loads with a warning, since the model it gives
 * is not the one PEFT would build.
 */
const UNSUPPORTED_FIELDS = [
  'alora_invocation_tokens',
  'arrow_config',
  'ensure_weight_tying',
  'kasa_config',
  'layer_replication',
  'megatron_config',
  'monteclora_config',
  'target_parameters',
  'use_bdlora',
  'use_qalora',
  'velora_config',
];

/** The largest `K` of `init_lora_weights: 'pissa_niter_K'`: PEFT's docs use 4 to 16; beyond this an SVD only costs time. */
export const MAX_PISSA_NITER = 1000;
/** The largest magnitude a float32 holds: an alpha (or scaling) beyond it is infinite in the layers' arithmetic. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** How a config's fields are named in messages: TypeScript options (`loraAlpha`) or adapter_config.json's (`lora_alpha`). */
type Naming = 'ts' | 'json';

function fieldName(camel: keyof LoraConfig, naming: Naming): string {
  return naming === 'json' ? (SNAKE[camel as Exclude<keyof LoraConfig, 'extra'>] ?? camel) : camel;
}

function isStringList(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isIndex(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

/** Checks every field's type and range; `naming` picks the names the messages use. */
function validate(c: LoraConfig, naming: Naming, file?: string): void {
  const fail = (camel: keyof LoraConfig, message: string): never => {
    throw new LoraConfigError(message, { field: fieldName(camel, naming), ...(file === undefined ? {} : { file }) });
  };
  const expect = (camel: keyof LoraConfig, ok: boolean, what: string, example: string) => {
    if (!ok)
      fail(camel, `${fieldName(camel, naming)} must be ${what}; got ${describeValue(c[camel])}. Set it to ${example}`);
  };
  expect('peftType', c.peftType === 'LORA', "'LORA'", "'LORA' (only LoRA adapters are supported)");
  if (c.taskType !== null && !TASK_TYPES.includes(c.taskType)) {
    fail(
      'taskType',
      `Invalid task type: ${describeValue(c.taskType)}. Must be one of the following task types: ${TASK_TYPES.join(', ')}.`,
    );
  }
  for (const k of ['baseModelNameOrPath', 'revision'] as const)
    expect(k, c[k] === null || typeof c[k] === 'string', 'a string or null', 'the base model name, or null');
  for (const k of ['inferenceMode', 'fanInFanOut', 'useRslora', 'useDora', 'loraBias'] as const)
    expect(k, typeof c[k] === 'boolean', 'true or false', 'true or false');
  if (!Number.isSafeInteger(c.r) || c.r <= 0)
    fail(
      'r',
      `\`r\` should be a positive integer value but the value passed is ${describeValue(c.r)}. Set ${fieldName('r', naming)} to a rank such as 8`,
    );
  expect(
    'loraAlpha',
    typeof c.loraAlpha === 'number' && Number.isFinite(c.loraAlpha) && Math.abs(c.loraAlpha) <= FLOAT32_MAX,
    'a finite number (float32 range)',
    'a number such as 16 (often 2·r)',
  );
  expect(
    'loraDropout',
    typeof c.loraDropout === 'number' && c.loraDropout >= 0 && c.loraDropout < 1,
    'a number in [0, 1)',
    'a probability such as 0.05, or 0 for none',
  );
  if (!['none', 'all', 'lora_only'].includes(c.bias as string))
    fail(
      'bias',
      `Requested bias: ${describeValue(c.bias)}, is not implemented. Set bias to 'none', 'all' or 'lora_only'`,
    );
  for (const k of ['targetModules', 'excludeModules'] as const)
    expect(
      k,
      c[k] === null || typeof c[k] === 'string' || isStringList(c[k]),
      'a list of module names, a regular expression string, or null',
      "['q_proj', 'v_proj'] or a regex such as '.*\\.(q|v)_proj'",
    );
  expect(
    'modulesToSave',
    c.modulesToSave === null || isStringList(c.modulesToSave),
    'a list of module names or null',
    "['lm_head']",
  );
  expect(
    'layersToTransform',
    c.layersToTransform === null ||
      isIndex(c.layersToTransform) ||
      (Array.isArray(c.layersToTransform) && c.layersToTransform.every(isIndex)),
    'a layer index, a list of layer indices, or null',
    '[0, 1, 2]',
  );
  expect(
    'layersPattern',
    c.layersPattern === null || typeof c.layersPattern === 'string' || isStringList(c.layersPattern),
    'a string, a list of strings, or null',
    "'layers' (the name of the ModuleList holding the layers)",
  );
  expect('rankPattern', isRecord(c.rankPattern), 'an object of module patterns to ranks', "{ 'mlp': 4 }");
  for (const [k, v] of Object.entries(c.rankPattern))
    if (!Number.isSafeInteger(v) || (v as number) <= 0)
      fail(
        'rankPattern',
        `${fieldName('rankPattern', naming)}[${describeValue(k)}] = ${describeValue(v)} must be a positive integer`,
      );
  expect('alphaPattern', isRecord(c.alphaPattern), 'an object of module patterns to alphas', "{ 'mlp': 8 }");
  for (const [k, v] of Object.entries(c.alphaPattern))
    if (typeof v !== 'number' || !Number.isFinite(v) || Math.abs(v) > FLOAT32_MAX)
      fail(
        'alphaPattern',
        `${fieldName('alphaPattern', naming)}[${describeValue(k)}] = ${describeValue(v)} must be a finite number`,
      );
  const tti = c.trainableTokenIndices;
  expect(
    'trainableTokenIndices',
    tti === null ||
      (Array.isArray(tti) && tti.every(isIndex)) ||
      (isRecord(tti) && Object.values(tti).every((l) => Array.isArray(l) && l.every(isIndex))),
    'a list of token ids, an object of module names to token-id lists, or null',
    '[0, 1, 2] or { embed_tokens: [0, 1] }',
  );
  expect('extra', isRecord(c.extra), 'an object', '{}');
  const init = c.initLoraWeights;
  if (typeof init !== 'boolean' && typeof init !== 'string')
    fail(
      'initLoraWeights',
      `${fieldName('initLoraWeights', naming)} must be true, false or the name of an initialisation; got ${describeValue(init)}`,
    );
  if (typeof init === 'string') {
    if (!/^(gaussian|pissa|pissa_niter_\d+|olora|orthogonal|loftq|eva|lora_ga)$/i.test(init))
      fail(
        'initLoraWeights',
        `Unknown initialization init_lora_weights='${init.slice(0, 80)}'; use true, false, 'gaussian', 'pissa', 'pissa_niter_K', 'olora', 'orthogonal', 'loftq', 'eva' or 'lora_ga'`,
      );
    const niter = /^pissa_niter_(\d+)$/i.exec(init);
    if (niter && !(Number((niter[1] as string).slice(0, 12)) <= MAX_PISSA_NITER))
      fail(
        'initLoraWeights',
        `init_lora_weights ${describeValue(init)} asks for ${(niter[1] as string).length > 12 ? 'an absurd number of' : niter[1]} subspace iterations; at most ${MAX_PISSA_NITER} are allowed (PEFT's docs use pissa_niter_4 to pissa_niter_16)`,
      );
  }
  if (typeof c.targetModules === 'string' && c.layersToTransform !== null)
    fail('layersToTransform', '`layers_to_transform` cannot be used when `target_modules` is a str.');
  if (typeof c.targetModules === 'string' && c.layersPattern !== null)
    fail('layersPattern', '`layers_pattern` cannot be used when `target_modules` is a str.');
  if (c.layersPattern && c.layersToTransform === null)
    fail('layersPattern', 'When `layers_pattern` is specified, `layers_to_transform` must also be specified. ');
  if (c.loraBias && c.initLoraWeights !== true && c.initLoraWeights !== false) {
    fail(
      'loraBias',
      `The argument lora_bias=True is only supported with init_lora_weights=True or False, got init_lora_weights=${String(c.initLoraWeights)} instead.`,
    );
  }
  if (c.loraBias && c.useDora)
    fail('loraBias', 'The argument lora_bias=True is not supported for DoRA, please pass use_dora=False');
  try {
    checkPatterns(c);
  } catch (e) {
    if (e instanceof LoraConfigError && file !== undefined)
      throw new LoraConfigError(e.message, { field: e.field, file });
    throw e;
  }
}

/** The config's options, camelCase, with the snake_case names PEFT users type mapped to them. */
const BY_SNAKE = new Map<string, string>(Object.entries(SNAKE).map(([camel, snake]) => [snake, camel]));
const OPTIONS = [...Object.keys(SNAKE), 'extra'];

/** Refuses option keys `loraConfig` does not know, suggesting the camelCase option meant. */
function checkOptionKeys(fields: object): void {
  for (const key of Object.keys(fields)) {
    if (OPTIONS.includes(key)) continue;
    const camel = BY_SNAKE.get(key) ?? OPTIONS.find((o) => o.toLowerCase() === key.replace(/_/g, '').toLowerCase());
    if (camel) throw new LoraConfigError(`unknown option '${key}': did you mean ${camel}?`, { field: key });
    if (key in PEFT_DEFAULTS)
      throw new LoraConfigError(
        `unknown option '${key}': PEFT's ${key} is not supported by this version; leave it out`,
        { field: key },
      );
    const close = OPTIONS.map((o) => [o, editDistance(key.toLowerCase(), o.toLowerCase())] as const)
      .filter(([, d]) => d <= Math.max(2, Math.floor(key.length / 3)))
      .sort((a, b) => a[1] - b[1])[0]?.[0];
    throw new LoraConfigError(
      `unknown option '${key}'${close ? `: did you mean ${close}?` : ''} LoraConfig options are ${OPTIONS.join(', ')}`,
      { field: key },
    );
  }
}

/**
 * Makes a complete, validated LoraConfig from the fields given (PEFT's defaults for the rest). An
 * option it does not know is an error naming the one meant (`lora_alpha` → "did you mean loraAlpha?"),
 * so that PEFT's Python names are never silently ignored.
 *
 * @example
 * ```ts
 * const config = loraConfig({ r: 16, loraAlpha: 32, targetModules: ['q_proj', 'v_proj'], loraDropout: 0.05 });
 * loraConfig({ lora_alpha: 32 } as never); // LoraConfigError: unknown option 'lora_alpha': did you mean loraAlpha?
 * ```
 */
export function loraConfig(fields: Partial<LoraConfig> = {}): LoraConfig {
  if (!isRecord(fields))
    throw new LoraConfigError(`loraConfig takes an object of options; got ${describeValue(fields)}`);
  checkOptionKeys(fields);
  return makeConfig(fields, 'ts');
}

/**
 * Checks a complete config (one made by {@link loraConfig} and changed since, or built by hand):
 * unknown keys, every field's type and range, every regular expression. Throws a {@link LoraConfigError}.
 */
export function checkLoraConfig(config: LoraConfig): LoraConfig {
  if (!isRecord(config)) throw new LoraConfigError(`a LoraConfig must be an object; got ${describeValue(config)}`);
  checkOptionKeys(config);
  validate(config, 'ts');
  return config;
}

function makeConfig(fields: Partial<LoraConfig>, naming: Naming, file?: string): LoraConfig {
  const c: LoraConfig = {
    peftType: 'LORA',
    taskType: null,
    baseModelNameOrPath: null,
    revision: null,
    inferenceMode: false,
    r: 8,
    targetModules: null,
    excludeModules: null,
    loraAlpha: 8,
    loraDropout: 0,
    fanInFanOut: false,
    bias: 'none',
    useRslora: false,
    modulesToSave: null,
    initLoraWeights: true,
    layersToTransform: null,
    layersPattern: null,
    rankPattern: {},
    alphaPattern: {},
    useDora: false,
    loraBias: false,
    trainableTokenIndices: null,
    extra: {},
  };
  // an explicit undefined keeps the default (as leaving the option out does)
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) (c as unknown as Record<string, unknown>)[k] = v;
  validate(c, naming, file);
  return c;
}

/** How deep a value in adapter_config.json may nest: PEFT's deepest field is two levels down. */
const MAX_JSON_DEPTH = 64;

function depthOf(v: unknown, limit: number): number {
  // iterative, so that a hostile file cannot overflow the stack while being measured
  let deepest = 0;
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop() as [unknown, number];
    deepest = Math.max(deepest, d);
    if (deepest > limit) return deepest;
    if (x && typeof x === 'object') for (const y of Object.values(x)) stack.push([y, d + 1]);
  }
  return deepest;
}

/** Options of {@link loraConfigFromJson}. */
export interface LoraConfigFromJsonOptions {
  /** Receives the warnings (unknown keys, PEFT fields this version ignores); default `console.warn`. */
  warn?: (message: string) => void;
  /** The file the JSON came from, for messages (default `adapter_config.json`). */
  file?: string;
}

/**
 * Reads `adapter_config.json`. Keys this version does not know are kept in `extra` (and written
 * back on save) with a warning, never an error; PEFT fields it does not implement (aLoRA,
 * `layer_replication`, `use_qalora`, `target_parameters`, …) set to anything but PEFT's default load
 * with a warning that the model will differ from PEFT's. Wrong types and ranges are a
 * {@link LoraConfigError} naming the file, the field and the value. `peft_type` must be `'LORA'`.
 *
 * @example
 * ```ts
 * const file = 'adapter/adapter_config.json';
 * const config = loraConfigFromJson(JSON.parse(await readFile(file, 'utf8')), { file });
 * ```
 */
export function loraConfigFromJson(json: Record<string, unknown>, options: LoraConfigFromJsonOptions = {}): LoraConfig {
  const file = options.file ?? 'adapter_config.json';
  const warn = options.warn ?? console.warn;
  if (!isRecord(json))
    throw new LoraConfigError(`must hold a JSON object of PEFT's LoraConfig fields; got ${describeValue(json)}`, {
      file,
    });
  if (depthOf(json, MAX_JSON_DEPTH) > MAX_JSON_DEPTH)
    throw new LoraConfigError(`nests deeper than ${MAX_JSON_DEPTH} levels; it is not a PEFT adapter config`, { file });
  if (json.peft_type === undefined)
    throw new LoraConfigError(
      "The LoraConfig config that is trying to be loaded is missing required keys: {'peft_type'}.",
      { file, field: 'peft_type' },
    );
  if (json.peft_type !== 'LORA')
    throw new LoraConfigError(`peft_type is ${describeValue(json.peft_type)}; only LORA adapters are supported`, {
      file,
      field: 'peft_type',
    });
  const fields: Partial<LoraConfig> = {};
  // Kept verbatim and written back: keys newer PEFT versions add, auto_mapping, and PEFT fields this
  // port does not act on when they hold something other than PEFT's default.
  const extra: Record<string, unknown> = Object.create(null);
  for (const [k, v] of Object.entries(json)) {
    const camel = BY_SNAKE.get(k);
    if (camel) (fields as Record<string, unknown>)[camel] = v;
    else if (k === 'peft_version' || k === 'runtime_config') continue;
    else if (k === 'auto_mapping' || !(k in PEFT_DEFAULTS) || JSON.stringify(v) !== JSON.stringify(PEFT_DEFAULTS[k]))
      extra[k] = v;
  }
  // PEFT reads a null pattern dict as "none" wherever it checks them; so do we
  if (fields.rankPattern === null) fields.rankPattern = {};
  if (fields.alphaPattern === null) fields.alphaPattern = {};
  const unknown = Object.keys(extra).filter((k) => !(k in PEFT_DEFAULTS) && k !== 'auto_mapping');
  if (unknown.length)
    warn(`${file} has keys this version does not know; they are kept and written back: ${unknown.join(', ')}`);
  const ignored = Object.keys(extra).filter((k) => UNSUPPORTED_FIELDS.includes(k));
  if (ignored.length)
    warn(
      `${file} sets ${ignored.map((k) => `${k} = ${describeValue(extra[k], 40)}`).join(', ')}, which this version does not implement: ${ignored.length > 1 ? 'they are' : 'it is'} ignored (kept and written back), so the model differs from the one PEFT builds from this file`,
    );
  return makeConfig({ ...fields, extra: { ...extra } }, 'json', file);
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.keys(v as object)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  return v;
}

/**
 * The config as PEFT writes `adapter_config.json`: snake_case, keys sorted, 2-space indent,
 * `inference_mode: true`, PEFT's other fields at their defaults, unknown keys read earlier written back.
 *
 * @example
 * ```ts
 * await writeFile('adapter_config.json', loraConfigToJson(config));
 * ```
 */
export function loraConfigToJson(c: LoraConfig): string {
  const out: Record<string, unknown> = { ...PEFT_DEFAULTS, peft_version: '0.21.0' };
  for (const [camel, snake] of Object.entries(SNAKE)) out[snake] = c[camel as keyof LoraConfig];
  out.inference_mode = true;
  if (Array.isArray(c.targetModules)) out.target_modules = [...c.targetModules].sort();
  if (Array.isArray(c.excludeModules)) out.exclude_modules = [...c.excludeModules].sort();
  // defined, not assigned: a key such as `__proto__` read from a file stays a key
  for (const [k, v] of Object.entries(c.extra))
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  if (c.taskType === null && out.auto_mapping === undefined) out.auto_mapping = null;
  return JSON.stringify(sortKeys(out), null, 2);
}

/** Scaling α/r, or α/√r with rsLoRA. */
export function loraScaling(alpha: number, r: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(r) : alpha / r;
}

/**
 * First pattern p (insertion order) whose regex `(.*\.)?(p)$` matches the module path, as PEFT's `get_pattern_key`.
 *
 * @example
 * ```ts
 * patternKey(['mlp', 'layers.1.out'], 'layers.1.out'); // 'layers.1.out'
 * patternKey(['mlp'], 'layers.0.q_proj');             // undefined: the config's r / lora_alpha apply
 * ```
 */
export function patternKey(patterns: string[], key: string, field = 'rank_pattern'): string | undefined {
  return firstPatternKey(patterns, key, field);
}

/**
 * An adapter's rank, alpha and scaling on one module: the first matching key of `rank_pattern` /
 * `alpha_pattern` (PEFT's `get_pattern_key`), else `r` / `lora_alpha`; scaling α/r or α/√r (rsLoRA).
 *
 * @example
 * ```ts
 * moduleScaling(loraConfig({ r: 4, loraAlpha: 8, rankPattern: { mlp: 2 } }), 'layers.0.mlp'); // { r: 2, alpha: 8, scaling: 4 }
 * ```
 */
export function moduleScaling(config: LoraConfig, path: string): { r: number; alpha: number; scaling: number } {
  const rKey = patternKey(Object.keys(config.rankPattern), path, 'rank_pattern');
  const aKey = patternKey(Object.keys(config.alphaPattern), path, 'alpha_pattern');
  const r = rKey === undefined ? config.r : (config.rankPattern[rKey] as number);
  const alpha = aKey === undefined ? config.loraAlpha : (config.alphaPattern[aKey] as number);
  return { r, alpha, scaling: loraScaling(alpha, r, config.useRslora) };
}
