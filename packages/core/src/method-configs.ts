/**
 * The sub-configurations of PEFT 0.21's LoRA methods (`LoftQConfig`, `EvaConfig`, `LoraGAConfig`,
 * `ArrowConfig` in `peft/tuners/lora/config.py`): typed, camelCase here, with PEFT's defaults and
 * checks; PEFT's snake_case objects in `adapter_config.json`, read and written back byte for byte.
 * The method packages (`@lora/loftq`, `@lora/eva`, `@lora/loraga`, `@lora/arrow`) read them from
 * the adapter's config.
 */
import { LoraConfigError } from './errors';
import { pythonFloat } from './files/peft-json';

/** PEFT's `LoftQConfig` (`loftq_config`): quantize the base weights and initialise A and B to make up for it. */
export interface LoftQConfig {
  /** Quantization bits for LoftQ (`loftq_bits`, default 4). */
  loftqBits: number;
  /** Alternating iterations for LoftQ (`loftq_iter`, default 1). */
  loftqIter: number;
  /** Keys of the file's object this version does not know: kept and written back. */
  extra?: Record<string, unknown>;
}

/** PEFT's `EvaConfig` (`eva_config`): data-driven initialisation by explained variance. */
export interface EvaConfig {
  /** The maximum rank of a layer is r·rho (`rho` ≥ 1, default 2). */
  rho: number;
  /** Cosine-similarity threshold that stops the incremental SVD (`tau` in [0, 1], default 0.99). */
  tau: number;
  /** Leave out positions whose label is `labelMaskValue` (`use_label_mask`, default true). */
  useLabelMask: boolean;
  /** The label that marks ignored positions (`label_mask_value`, default -100). */
  labelMaskValue: number;
  /** Whiten the singular vectors (`whiten`, default false). */
  whiten: boolean;
  /** Adjust each layer's alpha to its new rank (`adjust_scaling_factors`, default true). */
  adjustScalingFactors: boolean;
  extra?: Record<string, unknown>;
}

/** PEFT's `LoraGAConfig` (`lora_ga_config`): initialisation from the gradient's SVD. */
export interface LoraGaConfig {
  /** Which singular components go to A and B (`direction`, default `'ArB2r'`). */
  direction: 'ArBr' | 'A2rBr' | 'ArB2r' | 'random';
  /** How the factors are scaled (`scale`, default `'stable'`). */
  scale: 'stable' | 'weight_svd' | 'gd_scale' | 'unit';
  /** γ of the stable scaling (`stable_gamma`, default 16). */
  stableGamma: number;
  extra?: Record<string, unknown>;
}

/** PEFT's `ArrowConfig` (`arrow_config`): route each token over several task adapters (and GenKnowSub). */
export interface ArrowConfig {
  /** Experts combined per token (`top_k`, default 3). */
  topK: number;
  /** Softmax temperature of the routing coefficients (`router_temperature`, default 1). */
  routerTemperature: number;
  /** Subtract the average of general adapters from the task adapters (`use_gks`, default false). */
  useGks: boolean;
  /** The task adapters, `task_0, task_1, …` (`task_adapter_names`, set when the Arrow model is made). */
  taskAdapterNames: string[] | null;
  /** The general adapters for GenKnowSub, `gks_0, …` (`gks_adapter_names`, set when the Arrow model is made). */
  gksAdapterNames: string[] | null;
  /** Seed of the prototypes' power iteration (`rng_seed`, default null: not reproducible). */
  rngSeed: number | null;
  extra?: Record<string, unknown>;
}

type FieldKind = 'int' | 'float' | 'bool' | 'names' | 'int-or-null' | readonly string[];

interface Field {
  camel: string;
  snake: string;
  kind: FieldKind;
  value: unknown;
}

interface SubConfig {
  /** PEFT's class, for errors. */
  cls: string;
  /** The LoraConfig field and the adapter_config.json key. */
  camel: string;
  snake: string;
  fields: Field[];
  check?: (c: Record<string, unknown>) => void;
}

const SUB_CONFIGS = {
  loftqConfig: {
    cls: 'LoftQConfig',
    camel: 'loftqConfig',
    snake: 'loftq_config',
    fields: [
      { camel: 'loftqBits', snake: 'loftq_bits', kind: 'int', value: 4 },
      { camel: 'loftqIter', snake: 'loftq_iter', kind: 'int', value: 1 },
    ],
  },
  evaConfig: {
    cls: 'EvaConfig',
    camel: 'evaConfig',
    snake: 'eva_config',
    fields: [
      { camel: 'rho', snake: 'rho', kind: 'float', value: 2 },
      { camel: 'tau', snake: 'tau', kind: 'float', value: 0.99 },
      { camel: 'useLabelMask', snake: 'use_label_mask', kind: 'bool', value: true },
      { camel: 'labelMaskValue', snake: 'label_mask_value', kind: 'int', value: -100 },
      { camel: 'whiten', snake: 'whiten', kind: 'bool', value: false },
      { camel: 'adjustScalingFactors', snake: 'adjust_scaling_factors', kind: 'bool', value: true },
    ],
    check(c) {
      if ((c.rho as number) < 1) throw new LoraConfigError('`rho` must be >= 1.0');
      if ((c.tau as number) < 0 || (c.tau as number) > 1)
        throw new LoraConfigError('`tau` must be between 0.0 and 1.0.');
    },
  },
  loraGaConfig: {
    cls: 'LoraGAConfig',
    camel: 'loraGaConfig',
    snake: 'lora_ga_config',
    fields: [
      { camel: 'direction', snake: 'direction', kind: ['ArBr', 'A2rBr', 'ArB2r', 'random'], value: 'ArB2r' },
      { camel: 'scale', snake: 'scale', kind: ['stable', 'weight_svd', 'gd_scale', 'unit'], value: 'stable' },
      { camel: 'stableGamma', snake: 'stable_gamma', kind: 'int', value: 16 },
    ],
  },
  arrowConfig: {
    cls: 'ArrowConfig',
    camel: 'arrowConfig',
    snake: 'arrow_config',
    fields: [
      { camel: 'topK', snake: 'top_k', kind: 'int', value: 3 },
      { camel: 'routerTemperature', snake: 'router_temperature', kind: 'float', value: 1 },
      { camel: 'useGks', snake: 'use_gks', kind: 'bool', value: false },
      { camel: 'taskAdapterNames', snake: 'task_adapter_names', kind: 'names', value: null },
      { camel: 'gksAdapterNames', snake: 'gks_adapter_names', kind: 'names', value: null },
      { camel: 'rngSeed', snake: 'rng_seed', kind: 'int-or-null', value: null },
    ],
    check(c) {
      if ((c.topK as number) <= 0) throw new LoraConfigError('top_k cannot be negative.');
      if ((c.routerTemperature as number) <= 0) throw new LoraConfigError('router_temperature must be greater than 0.');
    },
  },
} satisfies Record<string, SubConfig>;

/** The LoraConfig fields that hold a method's sub-configuration. */
export type MethodConfigKey = keyof typeof SUB_CONFIGS;

/** The method sub-config fields, with their adapter_config.json keys. */
export const METHOD_CONFIG_KEYS: Record<MethodConfigKey, string> = {
  loftqConfig: 'loftq_config',
  evaConfig: 'eva_config',
  loraGaConfig: 'lora_ga_config',
  arrowConfig: 'arrow_config',
};

function checkValue(sub: SubConfig, field: Field, v: unknown, name: string): void {
  const where = `${sub.snake}.${name}`;
  const bad = (want: string) =>
    new LoraConfigError(`${where} must be ${want}, got ${JSON.stringify(v)} (${sub.cls}: see PEFT's defaults)`);
  const k = field.kind;
  if (Array.isArray(k)) {
    if (!k.includes(v as string)) throw bad(`one of ${k.map((x) => `'${x}'`).join(', ')}`);
  } else if (k === 'int' && !Number.isInteger(v)) throw bad('an integer');
  else if (k === 'float' && !(typeof v === 'number' && Number.isFinite(v))) throw bad('a number');
  else if (k === 'bool' && typeof v !== 'boolean') throw bad('true or false');
  else if (k === 'int-or-null' && v !== null && !Number.isInteger(v)) throw bad('an integer or null');
  else if (k === 'names' && v !== null && !(Array.isArray(v) && v.every((x) => typeof x === 'string')))
    throw bad('a list of adapter names or null');
}

/** A complete, checked sub-config from camelCase fields (PEFT's defaults for the rest). */
function build(sub: SubConfig, fields: Record<string, unknown>): Record<string, unknown> {
  if (typeof fields !== 'object' || fields === null || Array.isArray(fields))
    throw new LoraConfigError(`\`${sub.cls}\` must be a \`${sub.cls}\`, a dict, or None.`);
  const known = new Set([...sub.fields.map((x) => x.camel), 'extra']);
  const unknown = Object.keys(fields).filter((k) => !known.has(k) && fields[k] !== undefined);
  if (unknown.length)
    throw new LoraConfigError(
      `${sub.camel} has no field ${unknown.map((k) => `'${k}'`).join(', ')}; its fields are ${sub.fields.map((x) => x.camel).join(', ')}`,
    );
  const out: Record<string, unknown> = {};
  for (const field of sub.fields) {
    const v = fields[field.camel] === undefined ? field.value : fields[field.camel];
    checkValue(sub, field, v, field.snake);
    out[field.camel] = Array.isArray(v) ? [...v] : v;
  }
  if (fields.extra && Object.keys(fields.extra as object).length) out.extra = { ...(fields.extra as object) };
  sub.check?.(out);
  return out;
}

/**
 * A complete, checked `LoftQConfig`, PEFT's defaults for the fields not given.
 *
 * @example
 * ```ts
 * loraConfig({ initLoraWeights: 'loftq', loftqConfig: loftqConfig({ loftqBits: 4 }) });
 * ```
 */
export function loftqConfig(fields: Partial<LoftQConfig> = {}): LoftQConfig {
  return build(SUB_CONFIGS.loftqConfig, fields) as unknown as LoftQConfig;
}

/**
 * A complete, checked `EvaConfig` (rho ≥ 1, tau in [0, 1], as PEFT checks), PEFT's defaults for the rest.
 *
 * @example
 * ```ts
 * loraConfig({ initLoraWeights: 'eva', evaConfig: evaConfig({ rho: 1.5 }) });
 * ```
 */
export function evaConfig(fields: Partial<EvaConfig> = {}): EvaConfig {
  return build(SUB_CONFIGS.evaConfig, fields) as unknown as EvaConfig;
}

/**
 * A complete, checked `LoraGAConfig`, PEFT's defaults for the rest.
 *
 * @example
 * ```ts
 * loraConfig({ initLoraWeights: 'lora_ga', loraGaConfig: loraGaConfig({ direction: 'ArB2r', scale: 'stable' }) });
 * ```
 */
export function loraGaConfig(fields: Partial<LoraGaConfig> = {}): LoraGaConfig {
  return build(SUB_CONFIGS.loraGaConfig, fields) as unknown as LoraGaConfig;
}

/**
 * A complete, checked `ArrowConfig` (top_k and router_temperature positive, as PEFT checks), PEFT's
 * defaults for the rest.
 *
 * @example
 * ```ts
 * loraConfig({ targetModules: ['q_proj'], arrowConfig: arrowConfig({ topK: 2 }) });
 * ```
 */
export function arrowConfig(fields: Partial<ArrowConfig> = {}): ArrowConfig {
  return build(SUB_CONFIGS.arrowConfig, fields) as unknown as ArrowConfig;
}

/** A method sub-config given in a LoraConfig (possibly partial), completed and checked; null stays null. */
export function completeMethodConfig(key: MethodConfigKey, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  return build(SUB_CONFIGS[key], value as Record<string, unknown>);
}

/**
 * The sub-config as `adapter_config.json` holds it: PEFT's snake_case object (floats as Python
 * writes them), `null` when absent, except `loftq_config`, which PEFT writes `{}` when absent.
 */
export function methodConfigToJson(key: MethodConfigKey, value: unknown): unknown {
  const sub: SubConfig = SUB_CONFIGS[key];
  if (value === null || value === undefined) return key === 'loftqConfig' ? {} : null;
  const c = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const field of sub.fields) {
    const v = c[field.camel];
    out[field.snake] = field.kind === 'float' && typeof v === 'number' ? pythonFloat(v) : v;
  }
  return { ...out, ...(c.extra as object | undefined) };
}

/**
 * The sub-config read from `adapter_config.json`: `null` (or `{}` for `loftq_config`) is absent;
 * keys this version does not know are kept in `extra` and reported through `unknownKeys`.
 */
export function methodConfigFromJson(key: MethodConfigKey, json: unknown, unknownKeys: string[] = []): unknown {
  const sub: SubConfig = SUB_CONFIGS[key];
  if (json === null || json === undefined) return null;
  if (typeof json !== 'object' || Array.isArray(json))
    throw new LoraConfigError(`\`${sub.cls}\` must be a \`${sub.cls}\`, a dict, or None.`);
  const o = json as Record<string, unknown>;
  if (key === 'loftqConfig' && Object.keys(o).length === 0) return null;
  const fields: Record<string, unknown> = {};
  const extra: Record<string, unknown> = {};
  const bySnake = new Map(sub.fields.map((x) => [x.snake, x.camel]));
  for (const [k, v] of Object.entries(o)) {
    const camel = bySnake.get(k);
    if (camel) fields[camel] = v;
    else {
      extra[k] = v;
      unknownKeys.push(`${sub.snake}.${k}`);
    }
  }
  if (Object.keys(extra).length) fields.extra = extra;
  return build(sub, fields);
}
