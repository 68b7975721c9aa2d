/**
 * PEFT's `LoraConfig`, in camelCase, with PEFT's defaults, validation and JSON form
 * (`adapter_config.json`, snake_case).
 */
import { describeValue } from '@lora/tensor';
import { LoraConfigError, editDistance } from './errors';
import { peftJson } from './files/peft-json';
import { isKnownLoraInit, knownLoraInits } from './inits/init-registry';
import {
  type ArrowConfig,
  type EvaConfig,
  type LoftQConfig,
  type LoraGaConfig,
  METHOD_CONFIG_KEYS,
  type MethodConfigKey,
  completeMethodConfig,
  evaConfig,
  methodConfigFromJson,
  methodConfigToJson,
} from './method-configs';
import { checkPatterns, firstPatternKey } from './patterns';
import { loraVariants } from './variants/variant-registry';

/**
 * `init_lora_weights` values: `@lora/core`'s (true, false, `'gaussian'`, `'pissa'`, `'pissa_niter_K'`,
 * `'olora'`, `'orthogonal'`), the method packages' (`'loftq'`, `'eva'`, `'lora_ga'`), or any name
 * registered with `registerLoraInit`.
 */
export type InitLoraWeights =
  | boolean
  | 'gaussian'
  | 'pissa'
  | `pissa_niter_${number}`
  | 'olora'
  | 'orthogonal'
  | 'loftq'
  | 'eva'
  | 'lora_ga'
  | (string & {});

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
  /** LoftQ's settings (`loftq_config`, `{}` in the file when null); required with `initLoraWeights: 'loftq'`. */
  loftqConfig: LoftQConfig | null;
  /** EVA's settings (`eva_config`); `initLoraWeights: 'eva'` without them takes PEFT's default (with its warning). */
  evaConfig: EvaConfig | null;
  /** LoRA-GA's settings (`lora_ga_config`), read with `initLoraWeights: 'lora_ga'`. */
  loraGaConfig: LoraGaConfig | null;
  /** Arrow's router settings (`arrow_config`): an adapter with them is an Arrow router (`@lora/arrow`). */
  arrowConfig: ArrowConfig | null;
  /** Keys read from a file that this version does not know: kept and written back. */
  extra: Record<string, unknown>;
}

const TASK_TYPES = ['SEQ_CLS', 'SEQ_2_SEQ_LM', 'CAUSAL_LM', 'TOKEN_CLS', 'QUESTION_ANS', 'FEATURE_EXTRACTION'];

/**
 * What {@link loraConfig} takes: any fields of a {@link LoraConfig}, the method sub-configs partial
 * too (PEFT's defaults fill them in).
 */
export type LoraConfigFields = Partial<Omit<LoraConfig, MethodConfigKey>> & {
  [K in MethodConfigKey]?: Partial<NonNullable<LoraConfig[K]>> | null;
};

/** PEFT's field names in adapter_config.json, for each of ours (the method sub-configs apart: METHOD_CONFIG_KEYS). */
const SNAKE: Record<Exclude<keyof LoraConfig, 'extra' | MethodConfigKey>, string> = {
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
  corda_config: null,
  ensure_weight_tying: false,
  kasa_config: null,
  layer_replication: null,
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
  const snake = { ...SNAKE, ...METHOD_CONFIG_KEYS } as Record<string, string>;
  return naming === 'json' ? (snake[camel] ?? camel) : camel;
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
    // the init registry says what is known: @lora/core's, the method packages' names, and any registered one
    if (!isKnownLoraInit(init))
      fail(
        'initLoraWeights',
        `Unknown initialization init_lora_weights='${init.slice(0, 80)}'; known: ${knownLoraInits()}, or a name registered with registerLoraInit`,
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
  // the method sub-configs, checked as PEFT's dataclasses check them (a complete one passes unchanged)
  for (const key of Object.keys(METHOD_CONFIG_KEYS) as MethodConfigKey[]) {
    try {
      completeMethodConfig(key, c[key]);
    } catch (e) {
      if (e instanceof LoraConfigError) fail(key, e.message);
      throw e;
    }
  }
  if (init === 'loftq' && !c.loftqConfig)
    fail('loftqConfig', "`loftq_config` must be specified when `init_lora_weights` is 'loftq'.");
  try {
    checkPatterns(c);
  } catch (e) {
    if (e instanceof LoraConfigError && file !== undefined)
      throw new LoraConfigError(e.message, { field: e.field, file });
    throw e;
  }
}

/** The config's options, camelCase, with the snake_case names PEFT users type mapped to them. */
let names: { bySnake: Map<string, string>; methodSnake: Set<string>; options: string[] } | undefined;
/** Built on first use, so that a bundle that never reads a config leaves these tables (and the method configs) out. */
function optionNames(): { bySnake: Map<string, string>; methodSnake: Set<string>; options: string[] } {
  names ??= {
    bySnake: new Map<string, string>(
      Object.entries({ ...SNAKE, ...METHOD_CONFIG_KEYS }).map(([camel, snake]) => [snake, camel]),
    ),
    methodSnake: new Set<string>(Object.values(METHOD_CONFIG_KEYS)),
    options: [...Object.keys(SNAKE), ...Object.keys(METHOD_CONFIG_KEYS), 'extra'],
  };
  return names;
}

/** Refuses option keys `loraConfig` does not know, suggesting the camelCase option meant. */
function checkOptionKeys(fields: object): void {
  const { bySnake, options } = optionNames();
  for (const key of Object.keys(fields)) {
    if (options.includes(key)) continue;
    const camel = bySnake.get(key) ?? options.find((o) => o.toLowerCase() === key.replace(/_/g, '').toLowerCase());
    if (camel) throw new LoraConfigError(`unknown option '${key}': did you mean ${camel}?`, { field: key });
    if (key in PEFT_DEFAULTS)
      throw new LoraConfigError(
        `unknown option '${key}': PEFT's ${key} is not supported by this version; leave it out`,
        { field: key },
      );
    const close = options
      .map((o) => [o, editDistance(key.toLowerCase(), o.toLowerCase())] as const)
      .filter(([, d]) => d <= Math.max(2, Math.floor(key.length / 3)))
      .sort((a, b) => a[1] - b[1])[0]?.[0];
    throw new LoraConfigError(
      `unknown option '${key}'${close ? `: did you mean ${close}?` : ''} LoraConfig options are ${options.join(', ')}`,
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
export function loraConfig(fields: LoraConfigFields = {}): LoraConfig {
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

function makeConfig(fields: LoraConfigFields, naming: Naming, file?: string): LoraConfig {
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
    loftqConfig: null,
    evaConfig: null,
    loraGaConfig: null,
    arrowConfig: null,
    extra: {},
  };
  // an explicit undefined keeps the default (as leaving the option out does)
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) (c as unknown as Record<string, unknown>)[k] = v;
  validate(c, naming, file);
  // the method sub-configs completed with PEFT's defaults, then PEFT's LoraConfig.__post_init__, in its order
  for (const key of Object.keys(METHOD_CONFIG_KEYS) as MethodConfigKey[])
    (c as unknown as Record<string, unknown>)[key] = completeMethodConfig(key, c[key]);
  const init = c.initLoraWeights;
  if (init !== 'loftq' && c.loftqConfig) {
    c.loftqConfig = null;
    console.warn("`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.");
  } else if (init !== 'loftq' && init === 'eva' && !c.evaConfig) {
    console.warn("`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config.");
    c.evaConfig = evaConfig();
  } else if (init !== 'loftq' && init !== 'eva' && c.evaConfig) {
    console.warn("`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'.");
  }
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
  const fields: Record<string, unknown> = {};
  const unknownSubKeys: string[] = [];
  const { bySnake, methodSnake } = optionNames();
  // Kept verbatim and written back: keys newer PEFT versions add, auto_mapping, and PEFT fields this
  // port does not act on when they hold something other than PEFT's default.
  const extra: Record<string, unknown> = Object.create(null);
  for (const [k, v] of Object.entries(json)) {
    const camel = bySnake.get(k);
    if (camel && methodSnake.has(k)) {
      try {
        fields[camel] = methodConfigFromJson(camel as MethodConfigKey, v, unknownSubKeys);
      } catch (e) {
        if (e instanceof LoraConfigError) throw new LoraConfigError(e.message, { field: k, file });
        throw e;
      }
    } else if (camel) fields[camel] = v;
    else if (k === 'peft_version' || k === 'runtime_config') continue;
    else if (k === 'auto_mapping' || !(k in PEFT_DEFAULTS) || JSON.stringify(v) !== JSON.stringify(PEFT_DEFAULTS[k]))
      extra[k] = v;
  }
  // PEFT reads a null pattern dict as "none" wherever it checks them; so do we
  if (fields.rankPattern === null) fields.rankPattern = {};
  if (fields.alphaPattern === null) fields.alphaPattern = {};
  const unknown = [
    ...Object.keys(extra).filter((k) => !(k in PEFT_DEFAULTS) && k !== 'auto_mapping'),
    ...unknownSubKeys,
  ];
  if (unknown.length)
    warn(`${file} has keys this version does not know; they are kept and written back: ${unknown.join(', ')}`);
  const ignored = Object.keys(extra).filter((k) => UNSUPPORTED_FIELDS.includes(k));
  if (ignored.length)
    warn(
      `${file} sets ${ignored.map((k) => `${k} = ${describeValue(extra[k], 40)}`).join(', ')}, which this version does not implement: ${ignored.length > 1 ? 'they are' : 'it is'} ignored (kept and written back), so the model differs from the one PEFT builds from this file`,
    );
  // Arrow's router needs @lora/arrow's variant: without it the adapter would run as plain LoRA
  if (fields.arrowConfig && !loraVariants().some((v) => v.configKey === 'arrow_config'))
    warn(
      `${file} sets arrow_config (an Arrow router), which needs @lora/arrow: import it before loading, or the adapter runs as plain LoRA`,
    );
  return makeConfig({ ...(fields as LoraConfigFields), extra: { ...extra } }, 'json', file);
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
  for (const [camel, snake] of Object.entries(METHOD_CONFIG_KEYS))
    out[snake] = methodConfigToJson(camel as MethodConfigKey, c[camel as MethodConfigKey]);
  out.inference_mode = true;
  if (Array.isArray(c.targetModules)) out.target_modules = [...c.targetModules].sort();
  if (Array.isArray(c.excludeModules)) out.exclude_modules = [...c.excludeModules].sort();
  // defined, not assigned: a key such as `__proto__` read from a file stays a key
  for (const [k, v] of Object.entries(c.extra))
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  if (c.taskType === null && out.auto_mapping === undefined) out.auto_mapping = null;
  return peftJson(out);
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
