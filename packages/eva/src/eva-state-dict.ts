/**
 * `getEvaStateDict`: PEFT 0.21's `get_eva_state_dict` / `_get_eva_state_dict`. One forward pass per
 * batch with hooks on the target layers; each hook layer's inputs update an incremental PCA until the
 * components the rank distribution needs have converged; then the components are the new lora_A rows.
 */
import * as tf from '@tensorflow/tfjs-core';
import {
  type LoraConfig,
  type LoraConfigFields,
  PeftModel,
  checkLoraConfig,
  evaConfig as fullEvaConfig,
  loraConfig,
  matchModule,
  moduleScaling,
  resolveTargets,
} from '@lora/core';
import { type BatchSource, Linear, type Module, type RemovableHandle, TransposedLinear } from '@lora/nn';
import { Generator } from '@lora/tensor';
import { BatchStream } from './batches';
import { EvaError } from './errors';
import { type IpcaPrecision, IpcaUpdater, LayerPca } from './incremental-pca';
import {
  type ForwardFn,
  type PrepareLayerInputsFn,
  type PrepareModelInputsFn,
  checkLanguageModelingBatch,
  forwardFnDefault,
  prepareLayerInputsFnFlatten,
  prepareLayerInputsFnLanguageModeling,
  prepareModelInputsFnLanguageModeling,
} from './prepare';
import { type EvaProgress, evaProgressBar, wantsBar } from './progress';
import { rankDistribution, roundHalfEven } from './rank-distribution';
import { factorsOnBackend } from './small-factor';

/** Components per target layer, `[rank, in_features]`, by module name in the model given (PEFT's eva_state_dict). */
export type EvaStateDict = Record<string, tf.Tensor2D>;

/** What {@link getEvaStateDict} found, for logs and checks (given to `onComplete`). */
export interface EvaReport {
  /** Layers whose inputs were equal on the first batch (q/k/v, gate/up): the first of each computes for all. */
  groups: string[][];
  /** The rank each layer was given (its row count in the state dict). */
  ranks: Record<string, number>;
  /** Batches each hook layer's incremental PCA used (the other group members share their first's). */
  updates: Record<string, number>;
  /** Batches used in all (forward passes with hooks). */
  steps: number;
  /** Passes over the dataloader started. */
  passes: number;
  /** Layers whose assigned components had not converged when the pass stopped (maxPasses, a one-shot dataloader). */
  unconverged: string[];
  /** Milliseconds the call took. */
  elapsedMs: number;
}

/** Options of {@link getEvaStateDict}, PEFT's keyword arguments in camelCase, and a few of our own. */
export interface GetEvaStateDictOptions<B> {
  /** The LoRA config (its `evaConfig`, `r`, `rankPattern`, `targetModules`); required for a model that is not a PeftModel. */
  peftConfig?: LoraConfig | LoraConfigFields;
  /** Runs the model on a batch (default: `model.call(inputIds, { attentionMask, … })`). May be async. */
  forwardFn?: ForwardFn<B>;
  /**
   * What the layer functions get from each batch (default: the indices of the positions to keep, by
   * attention mask and labels); null: the batch itself.
   */
  prepareModelInputsFn?: PrepareModelInputsFn<B> | null;
  /**
   * The rows each layer's PCA sees (default: the layer input at those positions); a record by module
   * name for some layers (the others take the default); null: every position, flattened.
   */
  prepareLayerInputsFn?: PrepareLayerInputsFn | Record<string, PrepareLayerInputsFn> | null;
  /** The adapter whose config a PeftModel uses (default `'default'`). */
  adapterName?: string;
  /** Called after each batch. */
  onProgress?: (progress: EvaProgress) => void;
  /** A progress bar on stderr: `'auto'` (default) on a Node terminal, or true / false (PEFT's `show_progress_bar`). */
  progressBar?: boolean | 'auto';
  /** Stops between batches; the call then rejects with the signal's reason and the model is as it was. */
  signal?: AbortSignal;
  /**
   * The most passes over the dataloader (default 10; PEFT has no limit and can loop forever). Layers
   * that have not converged by then keep their current components, with a warning naming them.
   */
  maxPasses?: number;
  /** `'float32'` (default): the incremental PCA on the active backend; `'float64'`: on the CPU, PEFT's arithmetic exactly. */
  precision?: IpcaPrecision;
  /**
   * With `'float32'`: run the randomized SVD's small q×q factorisations, the sign fix and the
   * convergence test on the backend, so that each batch reads back once (default: on webgpu, where a
   * read-back drains the GPU queue); false runs them on the CPU in float64 (a read-back at each
   * CholeskyQR pass). Only the cpu and webgpu backends can run them.
   */
  factorOnBackend?: boolean;
  /**
   * Stop each forward pass once every layer still collecting inputs has had its input (default true):
   * the layers after it and the head are not run. Set false when a target layer runs more than once per forward.
   */
  stopForwardEarly?: boolean;
  /** Where warnings go (default console.warn). */
  warn?: (message: string) => void;
  /** Called once the components are computed, with what the pass found. */
  onComplete?: (report: EvaReport) => void;
}

/** A target layer: where its hook goes and how its state-dict key and rank are found. */
interface Target {
  /** The key in the state dict: the module name in the model given (`base_model.model.…` for a PeftModel). */
  name: string;
  /** The path in the user's model (rank_pattern lookups, messages). */
  path: string;
  module: Module;
}

const DETERMINISTIC = new Set<unknown>([prepareLayerInputsFnLanguageModeling, prepareLayerInputsFnFlatten]);
const PEFT_PREFIX = 'base_model.model.';

/** Thrown from a hook to end a forward pass whose remaining layers are not needed. */
class StopForward extends Error {
  readonly stopForward = true;
}
function isStopForward(e: unknown): boolean {
  for (let x = e; x; x = (x as { cause?: unknown }).cause)
    if ((x as { stopForward?: boolean }).stopForward) return true;
  return false;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('The EVA pass was aborted', 'AbortError');
}

/** The adapter config of a PeftModel, or the given one checked (PEFT's `peft_config`). */
function resolveConfig<B>(model: Module, options: GetEvaStateDictOptions<B>): LoraConfig {
  const adapter = options.adapterName ?? 'default';
  let config: LoraConfig;
  if (options.peftConfig) {
    const c = options.peftConfig;
    config =
      'peftType' in c && c.peftType === 'LORA' && 'extra' in c ? checkLoraConfig(c as LoraConfig) : loraConfig(c);
  } else if (model instanceof PeftModel) {
    const c = model.peftConfig.get(adapter);
    if (!c)
      throw new EvaError(
        'bad-model',
        `the PeftModel has no adapter '${adapter}' (adapters: ${model.adapters.join(', ')}); pass adapterName`,
      );
    config = checkLoraConfig(c);
  } else {
    throw new EvaError(
      'bad-model',
      'peft_config is required if model is not a PeftModel: pass { peftConfig } (r, targetModules, evaConfig)',
    );
  }
  return config;
}

/** The layers EVA initialises, in module order (PEFT's `target_module_check_fn`). */
function findTargets(model: Module, config: LoraConfig, adapter: string): Target[] {
  const targets: Target[] = [];
  if (model instanceof PeftModel) {
    // LoRA layers on Linear-like modules; Embedding and convolution LoRA layers are not supported (as PEFT)
    for (const [path, layer] of model.loraLayers())
      if (layer.kind === 'linear' && layer.settings.has(adapter))
        targets.push({ name: `${PEFT_PREFIX}${path}`, path, module: layer as unknown as Module });
  } else {
    const linear = (m: Module) => m instanceof Linear || m instanceof TransposedLinear;
    const wanted = config.targetModules === 'all-linear' ? new Set(resolveTargets(model, config).targeted) : null;
    for (const [path, m] of model.namedModules()) {
      if (!linear(m) || path === '') continue;
      const isTarget =
        wanted !== null ? wanted.has(path) : config.targetModules === null || matchModule(config, path) === 'targeted';
      if (isTarget) targets.push({ name: path, path, module: m });
    }
  }
  if (targets.length === 0)
    throw new EvaError(
      'no-targets',
      `no layer for EVA to initialise: ${
        model instanceof PeftModel
          ? `adapter '${adapter}' has no LoRA layer on a Linear module`
          : `no Linear module matches targetModules ${JSON.stringify(config.targetModules)}`
      } (EVA supports Linear layers only; Embedding and convolution targets keep the default init)`,
    );
  return targets;
}

/** Disposes the tensors in `value` (a tensor, an array or a plain object of them) that do not belong to the batch. */
function disposeOwned(value: unknown, batch: unknown): void {
  const theirs = new Set<tf.Tensor>();
  if (batch instanceof tf.Tensor) theirs.add(batch);
  else if (batch && typeof batch === 'object')
    for (const v of Object.values(batch)) if (v instanceof tf.Tensor) theirs.add(v);
  const visit = (v: unknown, depth: number) => {
    if (v instanceof tf.Tensor) {
      if (!theirs.has(v)) v.dispose();
    } else if (depth < 2 && Array.isArray(v)) for (const x of v) visit(x, depth + 1);
    else if (depth < 2 && v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype)
      for (const x of Object.values(v)) visit(x, depth + 1);
  };
  visit(value, 0);
}

/** One forward pass's inputs for a layer: the rows its PCA sees, and the raw input they came from. */
interface Capture {
  x: tf.Tensor2D;
  raw: unknown;
  fn: PrepareLayerInputsFn;
}

/**
 * Groups of target layers whose prepared inputs are identical on the first batch (q/k/v, gate/up), in
 * PEFT's order (by first member, members in module order). PEFT hashes each input's values; here
 * inputs of one shape are compared by a random projection on the backend, and candidates are then
 * checked element by element (skipped when they are the same tensor through the same default function).
 */
async function equalInputGroups(targets: Target[], captures: Map<string, Capture>): Promise<string[][]> {
  // classes of layers known equal without looking: the same raw input through the same default function
  const classes: string[][] = [];
  for (const t of targets) {
    const mine = captures.get(t.name) as Capture;
    const cls = DETERMINISTIC.has(mine.fn)
      ? classes.find((c) => {
          const head = captures.get(c[0] as string) as Capture;
          return head.raw === mine.raw && head.fn === mine.fn;
        })
      : undefined;
    if (cls) cls.push(t.name);
    else classes.push([t.name]);
  }
  // classes whose rows have the same shape: compared by a random projection, then element by element
  const byShape = new Map<string, string[][]>();
  for (const c of classes) {
    const key = (captures.get(c[0] as string) as Capture).x.shape.join('x');
    byShape.set(key, [...(byShape.get(key) ?? []), c]);
  }
  const merged = new Map<string[], string[][]>(); // representative class -> classes equal to it
  for (const list of byShape.values()) {
    if (list.length < 2) continue;
    const xs = list.map((c) => (captures.get(c[0] as string) as Capture).x);
    const [rows, cols] = (xs[0] as tf.Tensor2D).shape;
    const fp = tf.tidy(() => {
      const w = new Generator(7).randn([rows, cols]);
      return tf.stack(xs.map((x) => tf.sum(tf.mul(tf.cast(x, 'float32'), w))));
    });
    const fingerprints = Array.from(await fp.data());
    fp.dispose();
    const reps: number[] = [];
    for (let i = 0; i < list.length; i++) {
      let joined = false;
      for (const r of reps) {
        if (fingerprints[r] !== fingerprints[i]) continue;
        const all = tf.tidy(() => tf.all(tf.equal(xs[i] as tf.Tensor, xs[r] as tf.Tensor)));
        const equal = ((await all.data())[0] as number) === 1;
        all.dispose();
        if (equal) {
          merged.get(list[r] as string[])?.push(list[i] as string[]);
          joined = true;
          break;
        }
      }
      if (!joined) {
        reps.push(i);
        merged.set(list[i] as string[], []);
      }
    }
  }
  const order = new Map(targets.map((t, i) => [t.name, i]));
  const groups: string[][] = [];
  for (const c of classes) {
    const others = merged.get(c);
    if (others === undefined && [...merged.values()].some((l) => l.includes(c))) continue;
    const members = [...c, ...(others ?? []).flat()].sort(
      (a, b) => (order.get(a) as number) - (order.get(b) as number),
    );
    if (members.length > 1) groups.push(members);
  }
  // in the order of their first member among the targets (PEFT's dict order)
  return groups.sort((a, b) => (order.get(a[0] as string) as number) - (order.get(b[0] as string) as number));
}

/**
 * Computes EVA's components for each target layer of `model` from the batches of `dataloader` (PEFT's
 * `get_eva_state_dict`): an incremental PCA of each layer's inputs, one batch at a time, until the
 * components its rank needs have converged (cosine with the previous batch's ≥ `tau`), then ranks
 * redistributed across layers by explained variance (`rho`). Returns `[rank, in_features]` per layer
 * (rank 0 possible), keyed by module name in `model` (`base_model.model.…` for a PeftModel, whose
 * adapters are disabled during the pass); the caller owns the tensors. The model is left as it was:
 * hooks removed, train/eval mode and adapters restored, also when it throws.
 *
 * The dataloader is an array, an iterable, an async iterable, or a function returning one; it is read
 * batch by batch and started again for another pass (a one-shot generator cannot be: pass a function
 * returning a new one). Batch tensors stay the caller's.
 *
 * @example
 * ```ts
 * const batches = [{ inputIds, attentionMask }]; // tf.Tensor2D [batch, positions] each
 * const sd = await getEvaStateDict(model, batches, {
 *   peftConfig: { r: 8, targetModules: ['q_proj', 'v_proj'], initLoraWeights: 'eva', evaConfig: { rho: 2 } },
 * });
 * sd['model.layers.0.self_attn.q_proj'].shape; // [rank, hidden], rank between 0 and 16
 * tf.dispose(Object.values(sd));
 * ```
 */
export async function getEvaStateDict<B = unknown>(
  model: Module,
  dataloader: BatchSource<B>,
  options: GetEvaStateDictOptions<B> = {},
): Promise<EvaStateDict> {
  const started = Date.now();
  const adapter = options.adapterName ?? 'default';
  const warn = options.warn ?? console.warn;
  const config = resolveConfig(model, options);
  const eva = config.evaConfig ?? fullEvaConfig();
  const maxPasses = options.maxPasses ?? 10;
  if (!Number.isInteger(maxPasses) || maxPasses < 1)
    throw new EvaError('bad-model', `maxPasses must be a positive integer, got ${maxPasses}`);
  const forwardFn = options.forwardFn ?? (forwardFnDefault as ForwardFn<B>);
  const prepareModel =
    options.prepareModelInputsFn === undefined
      ? (prepareModelInputsFnLanguageModeling as PrepareModelInputsFn<B>)
      : options.prepareModelInputsFn;
  const layerFnOption =
    options.prepareLayerInputsFn === undefined ? prepareLayerInputsFnLanguageModeling : options.prepareLayerInputsFn;
  const usesDefaults = options.forwardFn === undefined || prepareModel === prepareModelInputsFnLanguageModeling;
  const targets = findTargets(model, config, adapter);

  // per layer: its prepare function (a record names some layers; unknown names are an error, as PEFT's)
  const layerFn = new Map<string, PrepareLayerInputsFn>();
  const mapping = layerFnOption !== null && typeof layerFnOption === 'object' ? { ...layerFnOption } : null;
  for (const t of targets) {
    let fn: PrepareLayerInputsFn | null | undefined;
    if (mapping) {
      fn = mapping[t.name] ?? mapping[t.path] ?? prepareLayerInputsFnLanguageModeling;
      delete mapping[t.name];
      delete mapping[t.path];
    } else fn = layerFnOption as PrepareLayerInputsFn | null;
    layerFn.set(t.name, fn ?? prepareLayerInputsFnFlatten);
  }
  if (mapping && Object.keys(mapping).length > 0)
    throw new EvaError(
      'bad-layer-inputs',
      `prepare_layer_inputs_fn is a mapping but the following module names were not found in the model: ${Object.keys(mapping).join(', ')}. Target layers: ${targets
        .slice(0, 6)
        .map((t) => t.name)
        .join(', ')}${targets.length > 6 ? ', …' : ''}`,
    );

  // rank budget and the most components per layer (PEFT: round(r·rho), rho capped for huge values)
  let rho = eva.rho;
  if (rho > 1000) {
    const maxDim = Math.max(...model.parameters().map((p) => Math.max(...p.shape)));
    rho = Math.min(rho, Math.floor(maxDim / config.r));
  }
  const maxComponents = new Map<string, number>();
  let budget = 0;
  for (const t of targets) {
    const { r } = moduleScaling(config, t.path);
    maxComponents.set(t.name, roundHalfEven(r * rho));
    budget += r;
  }

  if (options.factorOnBackend && options.precision !== 'float64' && !factorsOnBackend())
    throw new EvaError(
      'bad-model',
      `factorOnBackend needs the webgpu or cpu backend; the active one is '${tf.getBackend()}' (leave factorOnBackend unset there)`,
    );
  if (options.signal?.aborted) throw abortReason(options.signal);
  const stream = new BatchStream(dataloader, maxPasses);
  const first = await stream.next();
  if ('end' in first)
    throw new EvaError('empty-dataloader', 'dataloader is empty: it gave no batch; give at least one batch of inputs');
  if (usesDefaults) checkLanguageModelingBatch(first.batch, 'batch 0 of the dataloader');

  // the model as it is, restored at the end whatever happens
  const modes = [...model.namedModules()].map(([, m]) => [m, m.training] as const);
  const restoreAdapters = model instanceof PeftModel ? disableAdapters(model) : () => {};
  model.eval();
  const handles: RemovableHandle[] = [];
  const removeHooks = () => {
    for (const h of handles.splice(0)) h.remove();
  };
  const captures = new Map<string, Capture[]>();
  const dropCaptures = () => {
    for (const list of captures.values()) for (const c of list) c.x.dispose();
    captures.clear();
  };
  const updater = new IpcaUpdater({
    precision: options.precision,
    tau: eva.tau,
    factorOnBackend: options.precision === 'float64' ? false : options.factorOnBackend,
  });
  const pcas = new Map<string, LayerPca>();
  const bar = wantsBar(options.progressBar) ? evaProgressBar() : null;

  /** One forward with capturing hooks on `names`; returns once every hook fired (or the model finished). */
  const forward = async (batch: B, names: string[]) => {
    const modelInput = prepareModel === null ? batch : await prepareModel(batch, config);
    const waiting = new Set(names);
    // identical raw inputs through the same default function give the same rows: computed once
    const shared = new Map<unknown, Map<PrepareLayerInputsFn, tf.Tensor2D>>();
    tf.engine().startScope();
    try {
      for (const t of targets) {
        if (!waiting.has(t.name)) continue;
        const fn = layerFn.get(t.name) as PrepareLayerInputsFn;
        handles.push(
          t.module.registerForwardHook((_m, args) => {
            const raw = args[0];
            let x = DETERMINISTIC.has(fn) ? shared.get(raw)?.get(fn) : undefined;
            if (!x) {
              const prepared = fn(args, modelInput, t.name);
              if (!(prepared instanceof tf.Tensor) || prepared.rank !== 2)
                throw new EvaError(
                  'bad-layer-inputs',
                  `prepareLayerInputsFn for '${t.name}' returned ${
                    prepared instanceof tf.Tensor ? `a tensor of shape [${prepared.shape.join(', ')}]` : typeof prepared
                  }; it must return a 2-D [tokens, features] tensor`,
                );
              x = prepared as tf.Tensor2D;
              if (DETERMINISTIC.has(fn)) {
                const byFn = shared.get(raw) ?? new Map();
                byFn.set(fn, x);
                shared.set(raw, byFn);
              }
            }
            // a handle of its own (the rows may be the model's or the batch's tensor), kept past the pass
            const own = tf.keep(tf.clone(x));
            captures.set(t.name, [...(captures.get(t.name) ?? []), { x: own, raw, fn }]);
            waiting.delete(t.name);
            if (waiting.size === 0 && (options.stopForwardEarly ?? true))
              throw new StopForward('EVA: inputs collected');
            return undefined;
          }),
        );
      }
      try {
        await forwardFn(model, batch);
      } catch (e) {
        if (!isStopForward(e)) throw e;
      }
    } finally {
      removeHooks();
      tf.engine().endScope();
      disposeOwned(modelInput, batch);
    }
  };

  try {
    // batch 0: every target layer's inputs, to find equal-input groups (PEFT's hash pass), then the
    // first incremental-PCA step of the hook layers on the same batch (PEFT's loop starts at batch 0)
    await forward(
      first.batch,
      targets.map((t) => t.name),
    );
    const missing = targets.filter((t) => !captures.has(t.name));
    if (missing.length === targets.length)
      throw new EvaError(
        'no-layer-inputs',
        `no target layer received an input during the forward pass of batch 0 (${targets.length} targets, e.g. '${targets[0]?.name}'); check that forwardFn runs the model and that the targets are on its path`,
      );
    if (missing.length > 0)
      throw new EvaError(
        'no-layer-inputs',
        `${missing.length} target layer(s) received no input during the forward pass of batch 0: ${missing
          .map((t) => t.name)
          .join(', ')}; leave them out of targetModules (PEFT fails on such layers too)`,
      );
    const groups = await equalInputGroups(
      targets,
      new Map([...captures].map(([name, list]) => [name, list[0] as Capture])),
    );
    const hookOf = new Map<string, string>(targets.map((t) => [t.name, t.name]));
    const members: [string, string][] = [];
    for (const g of groups) {
      const head = g[0] as string;
      const most = Math.max(...g.map((n) => maxComponents.get(n) as number));
      for (const n of g) maxComponents.set(n, most);
      for (const n of g.slice(1)) {
        hookOf.set(n, head);
        members.push([n, head]);
      }
    }
    const hookNames = targets.map((t) => t.name).filter((n) => hookOf.get(n) === n);
    const layerHookMap: [string, string][] = [...hookNames.map((n) => [n, n] as [string, string]), ...members];
    for (const [n] of members) for (const c of captures.get(n) ?? []) c.x.dispose();
    for (const [n] of members) captures.delete(n);
    for (const n of hookNames) pcas.set(n, new LayerPca(n, maxComponents.get(n) as number));

    let rankDist = new Map(targets.map((t) => [t.name, maxComponents.get(t.name) as number]));
    const converged = new Map(hookNames.map((n) => [n, false]));
    const skipped = new Set<string>();
    let step = 0;
    const update = async () => {
      const entries = [];
      for (const [name, list] of captures) {
        const pca = pcas.get(name) as LayerPca;
        for (const c of list) {
          // PEFT's SVDHook skips a batch with fewer rows than components
          if ((c.x.shape[0] as number) < pca.k) {
            if (!skipped.has(name))
              warn(`skipping SVD for ${name} because there are less than ${pca.k} examples in a batch`);
            skipped.add(name);
            continue;
          }
          entries.push({ layer: pca, x: c.x });
        }
      }
      // several calls of one layer in one forward: one update after the other
      const rounds: (typeof entries)[] = [];
      const seen = new Map<LayerPca, number>();
      for (const e of entries) {
        const i = seen.get(e.layer) ?? 0;
        seen.set(e.layer, i + 1);
        (rounds[i] ??= []).push(e);
      }
      try {
        for (const r of rounds) await updater.update(r);
      } finally {
        dropCaptures();
      }
      step++;
      if ([...pcas.values()].every((p) => p.fitted))
        rankDist = rankDistribution({
          layerHookMap,
          explainedVarianceRatio: new Map([...pcas].map(([n, p]) => [n, p.explainedVarianceRatio as Float64Array])),
          maxComponents,
          budget,
        });
    };
    const report = () => {
      const convergedLayers = layerHookMap.filter(([, h]) => converged.get(h)).length;
      const p: EvaProgress = {
        step,
        pass: stream.pass,
        batch: stream.index,
        convergedLayers,
        totalLayers: layerHookMap.length,
        elapsedMs: Date.now() - started,
      };
      options.onProgress?.(p);
      bar?.update(p);
    };
    await update();
    report();

    let stoppedBy: string | null = null;
    for (;;) {
      // PEFT: a layer stops collecting once the components its current rank needs have converged, and
      // starts again if a new rank distribution needs more
      for (const name of hookNames) {
        const pca = pcas.get(name) as LayerPca;
        const done = pca.converged.slice(0, rankDist.get(name) as number).every(Boolean);
        converged.set(name, done);
      }
      if ([...converged.values()].every(Boolean)) break;
      // a macrotask turn between batches: on cpu and wasm every read resolves at once, so without it
      // no timer (AbortSignal.timeout), UI event or repaint would run until the pass ends
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (options.signal?.aborted) throw abortReason(options.signal);
      const next = await stream.next();
      if ('end' in next) {
        stoppedBy =
          next.end === 'max-passes'
            ? `after ${maxPasses} passes over the dataloader (maxPasses)`
            : next.end === 'one-shot'
              ? `when the dataloader, a one-shot iterator, ran out after ${stream.index + 1} batches (pass a function returning a fresh iterable to allow more passes)`
              : `when pass ${stream.pass} over the dataloader gave no batch`;
        break;
      }
      if (usesDefaults) checkLanguageModelingBatch(next.batch, `batch ${stream.index} of pass ${stream.pass}`);
      await forward(
        next.batch,
        hookNames.filter((n) => !converged.get(n)),
      );
      await update();
      report();
    }

    const result: EvaStateDict = {};
    const unconverged: string[] = [];
    try {
      for (const [name, rank] of rankDist) {
        const pca = pcas.get(hookOf.get(name) as string) as LayerPca;
        const comps = await pca.componentRows();
        if (comps === null)
          throw new EvaError(
            'no-layer-inputs',
            `layer ${name} never had a batch with at least ${pca.k} rows (its most components) to fit; give larger batches or lower r·rho`,
          );
        const d = comps.length / pca.k;
        if (!pca.converged.slice(0, rank).every(Boolean)) unconverged.push(name);
        const rows = new Float32Array(rank * d);
        for (let i = 0; i < rank; i++) {
          // whitening divides each component by √(its singular value) once (PEFT divides in place on a
          // view its equal-input layers share, so there each group member divides the shared rows again)
          const scale = eva.whiten ? 1 / Math.sqrt((pca.singularValues as Float64Array)[i] as number) : 1;
          for (let j = 0; j < d; j++) rows[i * d + j] = (comps[i * d + j] as number) * scale;
        }
        result[name] = tf.tensor2d(rows, [rank, d]);
      }
    } catch (e) {
      tf.dispose(Object.values(result));
      throw e;
    }
    options.onComplete?.({
      groups,
      ranks: Object.fromEntries(rankDist),
      updates: Object.fromEntries([...pcas].map(([n, p]) => [n, p.updates])),
      steps: step,
      passes: stream.pass,
      unconverged,
      elapsedMs: Date.now() - started,
    });
    if (stoppedBy)
      warn(
        unconverged.length
          ? `EVA stopped ${stoppedBy} before these layers converged: ${unconverged.join(', ')}. Their current components are used; give more batches, more passes (maxPasses) or a lower tau`
          : `EVA stopped ${stoppedBy}; every layer's assigned components had converged`,
      );
    return result;
  } finally {
    removeHooks();
    dropCaptures();
    updater.dispose();
    for (const p of pcas.values()) p.dispose();
    for (const [m, training] of modes) m.training = training;
    restoreAdapters();
    if (bar) bar.done();
    await stream.close().catch(() => {});
  }
}

/** Disables a PeftModel's adapters (PEFT's `disable_adapter()` context); returns what puts them back as they were. */
function disableAdapters(model: PeftModel): () => void {
  const lora = [...model.loraLayers()].map(([, l]) => [l, l.disableAdapters] as const);
  const saved = [...model.modulesToSaveWrappers()].map(([, w]) => [w, w.disabled] as const);
  const tokens = [...model.tokenLayers()].map(([, t]) => [t, t.disableAdapters] as const);
  model.disableAdapters();
  return () => {
    for (const [l, v] of lora) l.disableAdapters = v;
    for (const [w, v] of saved) w.disabled = v;
    for (const [t, v] of tokens) t.disableAdapters = v;
  };
}
