/**
 * PEFT's `LoraConfig`, in camelCase, with PEFT's defaults, validation and JSON form
 * (`adapter_config.json`, snake_case).
 */
import { LoraConfigError } from './config-error';
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

export { LoraConfigError } from './config-error';

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

/** PEFT's field names in adapter_config.json, for each of ours (the method sub-configs apart). */
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

/**
 * Makes a complete, validated LoraConfig from the fields given (PEFT's defaults for the rest).
 *
 * @example
 * ```ts
 * const config = loraConfig({ r: 16, loraAlpha: 32, targetModules: ['q_proj', 'v_proj'], loraDropout: 0.05 });
 * ```
 */
export function loraConfig(fields: LoraConfigFields = {}): LoraConfig {
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
    ...(fields as Partial<LoraConfig>),
  };
  for (const key of Object.keys(METHOD_CONFIG_KEYS) as MethodConfigKey[])
    (c as unknown as Record<string, unknown>)[key] = completeMethodConfig(key, c[key]);
  validate(c);
  return c;
}

function validate(c: LoraConfig): void {
  if (c.taskType !== null && !TASK_TYPES.includes(c.taskType)) {
    throw new LoraConfigError(
      `Invalid task type: '${c.taskType}'. Must be one of the following task types: ${TASK_TYPES.join(', ')}.`,
    );
  }
  if (!Number.isInteger(c.r) || c.r <= 0)
    throw new LoraConfigError(`\`r\` should be a positive integer value but the value passed is ${c.r}`);
  if (!(c.loraDropout >= 0 && c.loraDropout < 1))
    throw new LoraConfigError(`lora_dropout must be in [0, 1), got ${c.loraDropout}`);
  if (!['none', 'all', 'lora_only'].includes(c.bias))
    throw new LoraConfigError(`Requested bias: ${c.bias}, is not implemented.`);
  if (typeof c.targetModules === 'string' && c.layersToTransform !== null)
    throw new LoraConfigError('`layers_to_transform` cannot be used when `target_modules` is a str.');
  if (typeof c.targetModules === 'string' && c.layersPattern !== null)
    throw new LoraConfigError('`layers_pattern` cannot be used when `target_modules` is a str.');
  if (c.layersPattern && c.layersToTransform === null)
    throw new LoraConfigError('When `layers_pattern` is specified, `layers_to_transform` must also be specified. ');
  if (c.loraBias && c.initLoraWeights !== true && c.initLoraWeights !== false) {
    throw new LoraConfigError(
      `The argument lora_bias=True is only supported with init_lora_weights=True or False, got init_lora_weights=${String(c.initLoraWeights)} instead.`,
    );
  }
  if (c.loraBias && c.useDora)
    throw new LoraConfigError('The argument lora_bias=True is not supported for DoRA, please pass use_dora=False');
  const init = c.initLoraWeights;
  if (!isKnownLoraInit(init)) {
    throw new LoraConfigError(
      `Unknown initialization init_lora_weights=${typeof init === 'string' ? `'${init}'` : JSON.stringify(init)}; known: ${knownLoraInits()}, or a name registered with registerLoraInit`,
    );
  }
  // PEFT's LoraConfig.__post_init__, in its order: loftq_config, then eva_config
  if (init === 'loftq') {
    if (!c.loftqConfig)
      throw new LoraConfigError("`loftq_config` must be specified when `init_lora_weights` is 'loftq'.");
  } else if (c.loftqConfig) {
    c.loftqConfig = null;
    console.warn("`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.");
  } else if (init === 'eva' && !c.evaConfig) {
    console.warn("`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config.");
    c.evaConfig = evaConfig();
  } else if (init !== 'eva' && c.evaConfig) {
    console.warn("`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'.");
  }
  for (const [k, v] of Object.entries(c.rankPattern))
    if (!Number.isInteger(v) || v <= 0)
      throw new LoraConfigError(`rank_pattern['${k}'] = ${v} must be a positive integer`);
}

/**
 * Reads `adapter_config.json`. Keys this version does not know are kept in `extra` (and written
 * back on save) with a warning, never an error. `peft_type` must be `'LORA'`.
 *
 * @example
 * ```ts
 * const config = loraConfigFromJson(JSON.parse(await readFile('adapter/adapter_config.json', 'utf8')));
 * ```
 */
export function loraConfigFromJson(
  json: Record<string, unknown>,
  options: { warn?: (message: string) => void } = {},
): LoraConfig {
  if (json.peft_type === undefined)
    throw new LoraConfigError(
      "The LoraConfig config that is trying to be loaded is missing required keys: {'peft_type'}.",
    );
  if (json.peft_type !== 'LORA')
    throw new LoraConfigError(
      `adapter_config.json has peft_type '${String(json.peft_type)}'; only LORA adapters are supported`,
    );
  const fields: Record<string, unknown> = {};
  const byJson = new Map<string, string>([
    ...Object.entries(SNAKE).map(([camel, snake]) => [snake, camel] as [string, string]),
    ...Object.entries(METHOD_CONFIG_KEYS).map(([camel, snake]) => [snake, camel] as [string, string]),
  ]);
  const methodKeys = new Set<string>(Object.values(METHOD_CONFIG_KEYS));
  // Kept verbatim and written back: keys newer PEFT versions add, auto_mapping, and PEFT fields this
  // port does not act on when they hold something other than PEFT's default.
  const extra: Record<string, unknown> = {};
  const unknownSubKeys: string[] = [];
  for (const [k, v] of Object.entries(json)) {
    const camel = byJson.get(k);
    if (camel && methodKeys.has(k)) fields[camel] = methodConfigFromJson(camel as MethodConfigKey, v, unknownSubKeys);
    else if (camel) fields[camel] = v;
    else if (k === 'peft_version' || k === 'runtime_config') continue;
    else if (k === 'auto_mapping' || !(k in PEFT_DEFAULTS) || JSON.stringify(v) !== JSON.stringify(PEFT_DEFAULTS[k]))
      extra[k] = v;
  }
  const unknown = [
    ...Object.keys(extra).filter((k) => !(k in PEFT_DEFAULTS) && k !== 'auto_mapping'),
    ...unknownSubKeys,
  ];
  if (unknown.length)
    (options.warn ?? console.warn)(
      `adapter_config.json has keys this version does not know; they are kept and written back: ${unknown.join(', ')}`,
    );
  return loraConfig({ ...(fields as LoraConfigFields), extra });
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
  Object.assign(out, c.extra);
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
export function patternKey(patterns: string[], key: string): string | undefined {
  return patterns.find((p) => new RegExp(`^(.*\\.)?(${p})$`).test(key));
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
  const rKey = patternKey(Object.keys(config.rankPattern), path);
  const aKey = patternKey(Object.keys(config.alphaPattern), path);
  const r = rKey === undefined ? config.r : (config.rankPattern[rKey] as number);
  const alpha = aKey === undefined ? config.loraAlpha : (config.alphaPattern[aKey] as number);
  return { r, alpha, scaling: loraScaling(alpha, r, config.useRslora) };
}
