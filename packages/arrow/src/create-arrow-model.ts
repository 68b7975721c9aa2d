import {
  AdapterFileError,
  type ArrowConfig,
  PeftModel,
  arrowConfig as completeArrowConfig,
  loadAdapter,
  loraConfig,
} from '@lora/core';
import type { Module } from '@lora/nn';
import { type HubOptions, type ModelFiles, isHubRepoId, openFiles } from '@lora/tensor';
import { ARROW_ROUTER, type ArrowRouter } from './arrow-router';
import { routersOf } from './arrow-variant';
import { checkArrowExperts } from './compatibility';
import { ArrowError } from './errors';
import type { PrototypeMethod } from './prototypes';

/** PEFT's names for the adapters `createArrowModel` loads. */
const TASK_PREFIX = 'task_';
const GKS_PREFIX = 'gks_';

/** Options of {@link createArrowModel}: the general adapters, how prototypes are made, and how files are found. */
export interface CreateArrowModelOptions extends HubOptions {
  /** GenKnowSub's general adapters (`general_adapter_paths`), loaded as `gks_0, gks_1, …`; needed with `useGks`. */
  generalAdapterPaths?: ModelFiles[];
  /** How prototypes are computed (default `'power-iteration'`, PEFT's; see {@link PrototypeMethod}). */
  prototypes?: PrototypeMethod;
  /** Receives warnings (keys an adapter file has no place for, ignored general adapters); default `console.warn`. */
  warn?: (message: string) => void;
}

/** How an adapter source reads in messages. */
function describeSource(files: ModelFiles, index: number): string {
  return typeof files === 'string' ? `'${files}'` : `the in-memory adapter #${index}`;
}

/**
 * PEFT's `_resolve_adapter_source`: a local directory is used as it is; `namespace/name/sub/folder`
 * that is not one is the sub-folder of a Hub repo (read into memory here, since loading takes a
 * directory or files); anything else goes to `loadAdapter` as it is (a directory or a repo id). Unlike
 * PEFT, a path that is plainly a path (absolute, `./`, `../`, `~`, a drive or backslash) is never
 * taken for a repo, so a missing directory is reported as such.
 */
async function adapterSource(files: ModelFiles, hub: HubOptions): Promise<ModelFiles> {
  if (typeof files !== 'string' || /^(\/|\.{1,2}\/|~)|\\|^[A-Za-z]:/.test(files)) return files;
  const parts = files.replace(/\/+$/g, '').split('/');
  const repo = parts.slice(0, 2).join('/');
  if (parts.length < 3 || !isHubRepoId(repo)) return files;
  const local = await openFiles(files, { ...hub, what: 'adapter directory' }).then(
    () => true,
    () => false,
  );
  if (local) return files;
  const source = await openFiles(repo, hub);
  const sub = parts.slice(2).join('/');
  if (!(await source.has(`${sub}/adapter_config.json`)))
    throw new AdapterFileError(
      `${repo}/${sub}/adapter_config.json`,
      `not found: ${repo} has no adapter in the sub-folder '${sub}' (PEFT reads 'namespace/name/sub/folder' as a Hub repo and a sub-folder)`,
    );
  const out = new Map<string, Uint8Array>();
  for (const f of ['adapter_config.json', 'adapter_model.safetensors'])
    if (await source.has(`${sub}/${f}`)) out.set(f, await source.bytes(`${sub}/${f}`));
  return out;
}

/**
 * Every Arrow router of the model with its layer's path (one per targeted layer), e.g. to read the
 * prototypes or count their builds.
 *
 * @example
 * ```ts
 * for (const [path, router] of arrowRouters(model)) console.log(path, router.taskAdapterNames, router.prototypes?.shape);
 * ```
 */
export function* arrowRouters(model: PeftModel, adapterName = ARROW_ROUTER): IterableIterator<[string, ArrowRouter]> {
  for (const [path, layer] of model.loraLayers()) {
    const routers = routersOf(layer);
    if (routers.has(adapterName)) yield [path, routers.get(adapterName)];
  }
}

/**
 * Applies GenKnowSub and builds the prototypes of every Arrow router now, instead of on the first
 * routed forward (where PEFT builds them). Exact prototypes (`prototypes: 'exact'`) read the experts'
 * factors back, which a webgpu forward cannot do: there, await this after adding or removing experts.
 *
 * @example
 * ```ts
 * await loadAdapter(model, 'experts/new', { adapterName: 'task_5' });
 * await buildArrowPrototypes(model);
 * ```
 */
export async function buildArrowPrototypes(model: PeftModel, adapterName = ARROW_ROUTER): Promise<void> {
  for (const [path, layer] of model.loraLayers()) {
    const routers = routersOf(layer);
    if (routers.has(adapterName)) await routers.get(adapterName).prepareAsync(layer, `'${path}'`);
  }
}

/**
 * Adds an Arrow router over adapters already in `model` (the second half of PEFT's
 * `create_arrow_model`, for adapters made or loaded another way): checks the task and general adapters
 * `config` names (`taskAdapterNames`, `gksAdapterNames`) as {@link createArrowModel} does, adds the
 * router adapter `arrow_router` on the modules they adapt, and makes it active. Throws an
 * {@link ArrowError} before changing anything when they do not fit together.
 *
 * @example
 * ```ts
 * // peft holds the adapters 'sql', 'math' and 'chat'
 * addArrowRouter(peft, arrowConfig({ topK: 2, taskAdapterNames: ['sql', 'math', 'chat'], gksAdapterNames: [] }));
 * const y = peft.call(x);
 * ```
 */
export function addArrowRouter(model: PeftModel, config: ArrowConfig): void {
  const tasks = config.taskAdapterNames ?? [];
  const general = config.useGks ? (config.gksAdapterNames ?? []) : [];
  if (tasks.length === 0)
    throw new ArrowError(
      'no-task-adapters',
      'addArrowRouter: arrowConfig.taskAdapterNames names no adapter; name the task experts to route over',
    );
  if (config.useGks && general.length === 0)
    throw new ArrowError(
      'no-general-adapters',
      'You should provide general LoRA paths if you want to use GenKnowSub. (useGks is true: name the general adapters in arrowConfig.gksAdapterNames, or set useGks false)',
    );
  const missing = [...tasks, ...general].filter((n) => !model.peftConfig.has(n));
  if (missing.length)
    throw new ArrowError(
      'no-task-adapters',
      `addArrowRouter: the model has no adapter ${missing.map((n) => `'${n}'`).join(', ')} (it has ${model.adapters.join(', ')})`,
      { adapter: missing[0] },
    );
  if (config.topK > tasks.length)
    throw new ArrowError(
      'top-k',
      `top_k is ${config.topK} but ${tasks.length} task adapter${tasks.length === 1 ? ' was' : 's were'} given: each token is routed through top_k experts (PEFT fails in torch.topk at the first forward). Set topK to at most ${tasks.length}, or add experts`,
    );
  const { paths, r } = checkArrowExperts(model, [...tasks, ...general]);
  const first = model.peftConfig.get(tasks[0] as string);
  model.addAdapter(
    ARROW_ROUTER,
    loraConfig({
      r,
      // the experts' own modules (PEFT passes their last names, which may reach modules no expert adapts)
      targetModules: paths,
      fanInFanOut: first?.fanInFanOut ?? false,
      arrowConfig: { ...config, taskAdapterNames: [...tasks], gksAdapterNames: [...general] },
    }),
  );
  model.setAdapter(ARROW_ROUTER);
}

/**
 * PEFT's `create_arrow_model`: loads the task adapters as `task_0, task_1, …` (and, with `useGks`, the
 * general adapters as `gks_0, …`) onto `baseModel`, checks that they fit together, and adds the router
 * adapter `arrow_router` (a LoRA adapter whose variant routes each token through its top-k task
 * experts, on every module the experts adapt), which it makes active. Adapters are directories or Hub
 * repo ids (`namespace/name/sub/folder` for a sub-folder, as PEFT) in Node, or their files in memory
 * (`{ 'adapter_config.json': …, 'adapter_model.safetensors': … }`, or `File`s) anywhere.
 *
 * GenKnowSub and the prototypes are computed on the first routed forward, as PEFT does (with
 * `prototypes: 'exact'`, here, before this returns), and again for experts added or removed later.
 * The routed forward costs work proportional to `topK`, not to the number of experts.
 *
 * Refuses (an {@link ArrowError}, the base model left as it was): no task adapter, `useGks` without
 * general adapters, `topK` above the number of experts, experts of different ranks, shapes or modules
 * (every module compared), non-Linear targets, DoRA or lora_bias experts. `arrowConfig` is checked as
 * PEFT's `ArrowConfig` (`LoraConfigError`); its `taskAdapterNames` and `gksAdapterNames` are set here.
 *
 * @example
 * ```ts
 * import { createArrowModel } from '@lora/arrow';
 * const model = await createArrowModel(base, ['experts/sql', 'experts/math', 'experts/chat'], { topK: 2 }, {
 *   generalAdapterPaths: ['experts/wiki-en'],   // with useGks: true
 * });
 * const logits = model.call(ids);
 * ```
 */
export async function createArrowModel(
  baseModel: Module,
  taskSpecificAdapterPaths: ModelFiles[],
  arrowConfig: Partial<ArrowConfig> = {},
  options: CreateArrowModelOptions = {},
): Promise<PeftModel> {
  const { generalAdapterPaths, prototypes = 'power-iteration', warn = console.warn, ...hub } = options;
  if (!Array.isArray(taskSpecificAdapterPaths) || taskSpecificAdapterPaths.length === 0)
    throw new ArrowError(
      'no-task-adapters',
      '`task_specific_adapter_paths` should contain at least one adapter path (createArrowModel got none: pass the task experts to route over)',
    );
  if (baseModel instanceof PeftModel)
    throw new ArrowError(
      'no-task-adapters',
      'createArrowModel takes the base model, not a PeftModel: pass peft.model after peft.unload(), or the model you loaded',
    );
  if (prototypes !== 'power-iteration' && prototypes !== 'exact')
    throw new ArrowError(
      'prototypes',
      `prototypes must be 'power-iteration' or 'exact', got ${JSON.stringify(prototypes)}`,
    );
  const { taskAdapterNames: _t, gksAdapterNames: _g, ...fields } = arrowConfig;
  const base = completeArrowConfig(fields);
  const general = generalAdapterPaths ?? [];
  if (base.useGks && general.length === 0)
    throw new ArrowError(
      'no-general-adapters',
      'You should provide general LoRA paths if you want to use GenKnowSub. (useGks is true: pass options.generalAdapterPaths, or set useGks false)',
    );
  if (!base.useGks && general.length)
    warn(
      `createArrowModel: ${general.length} general adapter(s) given but useGks is false, so they are not loaded (as PEFT); set useGks: true to subtract them`,
    );
  const n = taskSpecificAdapterPaths.length;
  if (base.topK > n)
    throw new ArrowError(
      'top-k',
      `top_k is ${base.topK} but ${n} task adapter${n === 1 ? ' was' : 's were'} given: each token is routed through top_k experts (PEFT fails in torch.topk at the first forward). Set topK to at most ${n}, or add experts`,
    );
  const taskNames = taskSpecificAdapterPaths.map((_, i) => `${TASK_PREFIX}${i}`);
  const gksNames = base.useGks ? general.map((_, i) => `${GKS_PREFIX}${i}`) : [];
  const sources = [
    ...taskSpecificAdapterPaths.map((files, i) => ({ files, name: taskNames[i] as string, what: `task adapter ${i}` })),
    ...(base.useGks ? general : []).map((files, i) => ({
      files,
      name: gksNames[i] as string,
      what: `general adapter ${i}`,
    })),
  ];
  let model: PeftModel | undefined;
  try {
    for (const [i, s] of sources.entries()) {
      let loaded: PeftModel;
      try {
        const files = await adapterSource(s.files, hub);
        ({ model: loaded } = await loadAdapter(model ?? baseModel, files, { ...hub, adapterName: s.name, warn }));
      } catch (e) {
        if (e instanceof Error)
          e.message = `${s.what} (${s.name}, ${describeSource(s.files, i < n ? i : i - n)}): ${e.message}`;
        throw e;
      }
      model = loaded;
    }
    const peft = model as PeftModel;
    addArrowRouter(peft, { ...base, taskAdapterNames: taskNames, gksAdapterNames: gksNames });
    for (const [, router] of arrowRouters(peft)) router.prototypeMethod = prototypes;
    if (prototypes === 'exact') await buildArrowPrototypes(peft);
    return peft;
  } catch (e) {
    // nothing stays: the base model gets its own layers back
    model?.unload();
    throw e;
  }
}
