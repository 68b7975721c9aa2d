import { Embedding, Linear, Module, isStoredWeightLayer } from '@lora/nn';
import type { AdapterSettings } from './layers/adapter-settings';
import { PEFT_SUFFIX } from './files/peft-keys';
import { dispatchLoraLayer } from './layers/dispatch';
import { baseBias, isTunerLayer } from './layers/lora-layer';
import type { LoraConv } from './layers/lora-conv';
import type { LoraEmbedding } from './layers/lora-embedding';
import type { LoraLinear } from './layers/lora-linear';
import { ModulesToSaveWrapper } from './layers/modules-to-save';
import { describeValue } from '@lora/tensor';
import { LoraConfigError } from './errors';
import { type TrainableTokensLayer, TrainableTokensWrapper, addTrainableTokens } from './layers/trainable-tokens';
import type { TunerLayer } from './layers/tuner-layer';
import { type LoraConfig, type LoraConfigFields, checkLoraConfig, loraConfig, moduleScaling } from './lora-config';
import { resolveTargets } from './targets';
import { trainableModuleNames } from './variants/variant-registry';

/** A layer with LoRA adapters, of one of `@lora/core`'s kinds (see {@link TunerLayer} for what every LoRA layer offers). */
export type LoraLayer = LoraLinear | LoraEmbedding | LoraConv;

/** The most values one LoRA factor may hold: 2²⁹ float32 values, 2 GiB, more than a browser backend holds in one tensor. */
const MAX_FACTOR_VALUES = 2 ** 29;

/**
 * Refuses an adapter rank no layer can use before anything is allocated. PEFT takes any r (its tests
 * put r 8 on 6×6 layers), and a rank above min(in, out) only adds parameters; but a rank above the
 * weight's number of entries can only be a mistake, and factors past {@link MAX_FACTOR_VALUES} cannot be
 * allocated.
 */
function checkRank(path: string, module: Module, r: number, fromPattern: boolean): void {
  const base = (isTunerLayer(module) ? module.baseLayer : module) as Module & { weight?: { shape: number[] } };
  // a 16-bit layer's weight parameter holds packed words: its float shape is the layer's own
  const floatShape =
    base instanceof Linear
      ? [base.outFeatures, base.inFeatures]
      : base instanceof Embedding
        ? [base.numEmbeddings, base.embeddingDim]
        : undefined;
  const shape: number[] | undefined = floatShape && isStoredWeightLayer(base) ? floatShape : base.weight?.shape;
  if (!shape || shape.length < 2) return;
  const out = shape[0] as number;
  const inF = shape.slice(1).reduce((a, b) => a * b, 1);
  const what = fromPattern ? `the rank_pattern entry for '${path}'` : 'r';
  const field = fromPattern ? 'rank_pattern' : 'r';
  const fix = `Set ${fromPattern ? 'that rank_pattern entry' : 'r'} to at most ${Math.min(out, inF)}, the largest rank an update of this layer can have`;
  if (r > out * inF)
    throw new LoraConfigError(
      `${what} is ${r}, more than the ${out * inF} entries of the weight of '${path}' (${module.constructor.name}, [${shape.join(', ')}]). ${fix}`,
      { field },
    );
  if (r * Math.max(out, inF) > MAX_FACTOR_VALUES)
    throw new LoraConfigError(
      `${what} is ${r}: a LoRA factor of '${path}' (weight [${shape.join(', ')}]) would hold ${r * Math.max(out, inF)} values, more than the ${MAX_FACTOR_VALUES} allowed in one tensor. ${fix}`,
      { field },
    );
}

/**
 * PEFT's `LoraModel`: holds the user's model as `model` (so paths read `base_model.model.…`). Made by
 * {@link getPeftModel}; rarely used directly.
 *
 * @example
 * ```ts
 * const peft = getPeftModel(model, { targetModules: ['q_proj'] });
 * peft.baseModel instanceof LoraModel; // true; peft.baseModel.model === model
 * ```
 */
export class LoraModel extends Module {
  model: Module;
  constructor(model: Module) {
    super();
    this.model = this.registerModule('model', model);
  }
  forward(...args: unknown[]): unknown {
    return this.model.call(...args);
  }
}

/**
 * A model with LoRA adapters, as PEFT's `PeftModel`: parameters are named
 * `base_model.model.<path>.lora_A.<adapter>.weight`, the user's model is changed in place (targets
 * replaced by LoRA layers), and `call(...)` runs the user's model.
 *
 * @example
 * ```ts
 * const peft = getPeftModel(model, { r: 8, targetModules: ['q_proj', 'v_proj'] }); // a PeftModel
 * peft.addAdapter('chat', loraConfig({ r: 16, targetModules: ['q_proj'] }));
 * peft.setAdapter('chat');
 * const y = peft.call(x);
 * ```
 */
export class PeftModel extends Module {
  baseModel: LoraModel;
  readonly peftConfig = new Map<string, LoraConfig>();
  /** The active adapters (see {@link setAdapter}). */
  private active: string[];

  constructor(model: Module, config: LoraConfig, adapterName: string) {
    super();
    this.baseModel = this.registerModule('base_model', new LoraModel(model));
    this.active = [adapterName];
    this.addAdapter(adapterName, config);
  }

  /**
   * Runs the user's model. As PEFT's `model(x, adapter_names=[...])`, a last argument that is a plain
   * object with `adapterNames` runs a mixed batch ({@link forwardMixed}); the key is removed and the
   * rest of the object, if anything is left, is passed on.
   *
   * @example
   * ```ts
   * const y = peft.call(x);
   * const mixed = peft.call(ids, { adapterNames: ['sql', '__base__'] });
   * const withLoss = peft.call(ids, { labels: ids, adapterNames: ['sql', 'chat'] }); // { labels } reaches the model
   * ```
   */
  forward(...args: unknown[]): unknown {
    this.checkInitialized();
    const last = args.at(-1);
    if (
      last &&
      typeof last === 'object' &&
      Object.getPrototypeOf(last) === Object.prototype &&
      'adapterNames' in last
    ) {
      const { adapterNames, ...rest } = last as { adapterNames: string[] };
      const head = args.slice(0, -1);
      return this.forwardMixed(adapterNames, ...(Object.keys(rest).length ? [...head, rest] : head));
    }
    return this.baseModel.call(...args);
  }

  /**
   * Runs a mixed batch: row i goes through adapter `adapterNames[i]` (`'__base__'` for none), as
   * PEFT's `model(x, adapter_names=[...])`. Adapters must be unmerged; DoRA is not supported here (as PEFT).
   *
   * @example
   * ```ts
   * const y = peft.forwardMixed(['sql', 'chat', '__base__'], x);
   * ```
   */
  forwardMixed(adapterNames: string[], ...args: unknown[]): unknown {
    for (const n of new Set(adapterNames))
      if (n !== '__base__' && !this.peftConfig.has(n))
        throw new Error(`Trying to infer with non-existing adapter(s): ${n}`);
    const layers = this.tunerLayers();
    for (const l of layers) l.batchAdapterNames = adapterNames;
    try {
      return this.baseModel.call(...args);
    } finally {
      for (const l of layers) l.batchAdapterNames = null;
    }
  }

  /** Removes an adapter everywhere and frees its weights (PEFT's `delete_adapter`). */
  deleteAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`Adapter ${name} does not exist`);
    const layers = this.tunerLayers();
    if (layers.some((l) => l.mergedAdapters.includes(name)))
      throw new Error(`Cannot delete adapter(s) ['${name}'] while they are merged. Please unmerge them first.`);
    for (const l of layers) l.deleteAdapter(name);
    for (const [, w] of this.modulesToSaveWrappers()) w.deleteAdapter(name);
    this.peftConfig.delete(name);
    // as PEFT: the other active adapters stay active; with none left, the first adapter becomes active
    if (this.active.includes(name)) {
      const rest = this.active.filter((n) => n !== name);
      const next = rest.length ? rest : this.adapters.slice(0, 1);
      if (next.length) this.setAdapter(next);
    }
  }

  /** The user's model (with LoRA layers in it). */
  get model(): Module {
    return this.baseModel.model;
  }

  /**
   * Every LoRA layer with its path in the user's model: `@lora/core`'s and those registered
   * dispatchers made, as {@link TunerLayer}s.
   */
  *loraLayers(): IterableIterator<[string, TunerLayer]> {
    for (const [path, m] of this.model.namedModules()) if (isTunerLayer(m)) yield [path, m];
  }

  /**
   * Adds an adapter with its own config (PEFT's `add_adapter`). It is created but not activated,
   * as in PEFT; `setAdapter` activates it.
   */
  addAdapter(name: string, config: LoraConfig): void {
    if (this.peftConfig.has(name)) throw new Error(`Adapter with name ${name} already exists.`);
    checkLoraConfig(config);
    if (config.targetModules === null) config = { ...config, targetModules: defaultTargetModules(this.model) };
    if (config.bias !== 'none' && [...this.peftConfig.values()].some((c) => c.bias !== 'none')) {
      throw new Error(
        "LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all adapters.",
      );
    }
    const isFirst = this.peftConfig.size === 0;
    // Wrapped layers' own sub-paths (lora_A, base_layer, token_adapter…) are never targets themselves.
    const lora = new Set([...this.loraLayers(), ...this.tokenWrappers()].map(([p]) => p));
    const { targeted } = resolveTargets(this.model, config);
    const paths = targeted.filter((p) => ![...lora].some((l) => p.startsWith(`${l}.`)));
    // PEFT corrects fan_in_fan_out on the config itself as it wraps each new layer, so a correction
    // carries over to the layers after it and is what the adapter's config says in the end
    let fanInFanOut = config.fanInFanOut;
    const pending: Promise<void>[] = [];
    // every rank checked against its layer before the first layer is wrapped
    for (const path of paths) {
      const { r } = moduleScaling(config, path);
      checkRank(path, this.model.getSubmodule(path), r, r !== config.r);
    }
    try {
      for (const path of paths) {
        const module = this.model.getSubmodule(path);
        const { r, alpha } = moduleScaling(config, path);
        const settings: AdapterSettings = {
          r,
          loraAlpha: alpha,
          loraDropout: config.loraDropout,
          useRslora: config.useRslora,
          initLoraWeights: config.initLoraWeights,
          loraBias: config.loraBias,
          fanInFanOut,
          useDora: config.useDora,
          path,
        };
        let layer: TunerLayer;
        if (isTunerLayer(module)) {
          layer = module;
          const started = layer.updateLayer(name, layer.settingsFor(settings), config);
          if (started) pending.push(started);
        } else {
          layer = dispatchLoraLayer({ path, adapterName: name, target: module, config, settings });
          this.model.setSubmodule(path, layer);
          fanInFanOut = layer.settings.get(name)?.fanInFanOut ?? fanInFanOut;
          const started = layer.pendingInit(name);
          if (started) pending.push(started);
        }
      }
      // modules_to_save: a trainable copy per adapter of each module whose path ends with a listed name
      for (const m of config.modulesToSave ?? []) {
        for (const [path, module] of [...this.model.namedModules()]) {
          if (
            path === '' ||
            !path.endsWith(m) ||
            path.split('.').some((s) => s === 'original_module' || s === 'modules_to_save')
          )
            continue;
          if (module instanceof ModulesToSaveWrapper) module.addAdapter(name);
          else if (!isTunerLayer(module)) {
            const wrapper = new ModulesToSaveWrapper(module);
            this.model.setSubmodule(path, wrapper);
            wrapper.addAdapter(name);
          }
        }
      }
      // trainable_token_indices: chosen rows of the embedding (and of tied output layers), after modules_to_save as in PEFT
      addTrainableTokens(this.model, name, config);
    } catch (e) {
      this.removePartialAdapter(name);
      throw e;
    }
    this.peftConfig.set(name, fanInFanOut === config.fanInFanOut ? config : { ...config, fanInFanOut });
    if (pending.length) this.trackInit(name, pending);
    if (isFirst) this.setAdapter(name);
    else this.markTrainable();
  }

  /** Refuses a forward pass while an active adapter's asynchronous initialisation runs. */
  private checkInitialized(): void {
    for (const n of this.active)
      if (this.initializing.has(n))
        throw new Error(
          `adapter '${n}' is still being initialised (init_lora_weights=${JSON.stringify(this.peftConfig.get(n)?.initLoraWeights)} is asynchronous): await peft.initialized() first`,
        );
  }

  /** Asynchronous initialisations still running, by adapter (see {@link initialized}). */
  private readonly initializing = new Map<string, Promise<void>>();

  private trackInit(name: string, started: Promise<void>[]): void {
    const all = Promise.all(started).then(
      () => undefined,
      (e: unknown) => {
        // nothing of an adapter whose initialisation failed stays (other layers' inits may still be running)
        return Promise.allSettled(started).then(() => {
          if (this.peftConfig.has(name)) {
            this.removePartialAdapter(name);
            this.peftConfig.delete(name);
            if (this.active.includes(name)) {
              const rest = this.active.filter((n) => n !== name);
              this.active = rest.length ? rest : this.adapters.slice(0, 1);
              if (this.active.length) this.setAdapter(this.active);
            }
          }
          throw e;
        });
      },
    );
    const tracked = all.finally(() => {
      if (this.initializing.get(name) === tracked) this.initializing.delete(name);
    });
    tracked.catch(() => {}); // observed by initialized(); never an unhandled rejection
    this.initializing.set(name, tracked);
  }

  /**
   * Resolves when the asynchronous initialisations of an adapter (or of all adapters) are done: what a
   * method package's entry point awaits after `getPeftModel` or `addAdapter` with an initialiser that
   * returns a Promise. A failed one rejects, and the adapter is removed again (the model keeps the
   * others). Resolves at once when every initialiser was synchronous.
   *
   * @example
   * ```ts
   * const peft = getPeftModel(model, { initLoraWeights: 'my_async_init', targetModules: ['q_proj'] });
   * await peft.initialized();
   * ```
   */
  async initialized(adapterName?: string): Promise<void> {
    const waiting = adapterName === undefined ? [...this.initializing.values()] : [this.initializing.get(adapterName)];
    await Promise.all(waiting);
  }

  /**
   * Re-creates an adapter on one layer with changed settings (PEFT's `update_layer` on one module),
   * e.g. a new rank found by a data pass (EVA): the adapter is built again (its initialisation and
   * variant run again, on `changes.initLoraWeights` if given), stays active where it was, and the
   * adapter's config records the layer's rank and alpha in `rankPattern` / `alphaPattern` under its
   * full path (first, so that it wins over the patterns before it) where they differ from what the
   * config gives that path, so that a saved adapter loads at the same shapes.
   *
   * @example
   * ```ts
   * peft.updateAdapterLayer('layers.0.self_attn.q_proj', 'default', { r: 12, loraAlpha: 24 });
   * peft.peftConfig.get('default')!.rankPattern; // { 'layers.0.self_attn.q_proj': 12, … }
   * ```
   */
  updateAdapterLayer(
    path: string,
    adapterName: string,
    changes: Partial<Pick<AdapterSettings, 'r' | 'loraAlpha' | 'initLoraWeights'>>,
  ): void | Promise<void> {
    const config = this.peftConfig.get(adapterName);
    if (!config) throw new Error(`Adapter ${adapterName} does not exist; adapters: ${this.adapters.join(', ')}`);
    const layer = this.model.getSubmodule(path);
    if (!isTunerLayer(layer) || !layer.settings.has(adapterName))
      throw new Error(`'${path}' holds no LoRA layer with adapter '${adapterName}'`);
    if (layer.mergedAdapters.includes(adapterName))
      throw new Error(
        `Cannot update adapter '${adapterName}' on '${path}' while it is merged. Please unmerge it first.`,
      );
    const old = layer.settings.get(adapterName) as AdapterSettings;
    const next: AdapterSettings = { ...old, ...changes };
    const layerConfig = { ...config, initLoraWeights: next.initLoraWeights as LoraConfig['initLoraWeights'] };
    const started = layer.updateLayer(adapterName, next, layerConfig);
    const given = moduleScaling(config, path);
    const rankPattern = { ...config.rankPattern };
    const alphaPattern = { ...config.alphaPattern };
    delete rankPattern[path];
    delete alphaPattern[path];
    this.peftConfig.set(adapterName, {
      ...config,
      rankPattern:
        next.r === given.r && !(path in config.rankPattern) ? rankPattern : { [path]: next.r, ...rankPattern },
      alphaPattern:
        next.loraAlpha === given.alpha && !(path in config.alphaPattern)
          ? alphaPattern
          : { [path]: next.loraAlpha, ...alphaPattern },
    });
    this.markTrainable();
    if (started) {
      const earlier = this.initializing.get(adapterName);
      this.trackInit(adapterName, earlier ? [earlier, started] : [started]);
      return started;
    }
  }

  /**
   * Undoes a failed `addAdapter`: the adapter leaves every layer and wrapper it reached, and layers or
   * wrappers left holding no adapter give their place back to the module they wrapped.
   */
  private removePartialAdapter(name: string): void {
    for (const [path, layer] of [...this.loraLayers()]) {
      layer.deleteAdapter(name);
      if (layer.settings.size === 0) this.model.setSubmodule(path, layer.baseLayer);
    }
    for (const [path, w] of [...this.modulesToSaveWrappers()]) {
      w.deleteAdapter(name);
      if (w.modulesToSave.keys().length === 0) this.model.setSubmodule(path, w.originalModule);
    }
    for (const [path, w] of [...this.tokenWrappers()]) {
      w.tokenAdapter.deleteAdapter(name);
      if (w.tokenAdapter.adapters.length === 0) this.model.setSubmodule(path, w.tokenAdapter.baseLayer);
    }
  }

  /** Every modules_to_save wrapper with its path in the user's model. */
  *modulesToSaveWrappers(): IterableIterator<[string, ModulesToSaveWrapper]> {
    for (const [path, m] of this.model.namedModules()) if (m instanceof ModulesToSaveWrapper) yield [path, m];
  }

  /** Every trainable-tokens wrapper with its path in the user's model. */
  *tokenWrappers(): IterableIterator<[string, TrainableTokensWrapper]> {
    for (const [path, m] of this.model.namedModules()) if (m instanceof TrainableTokensWrapper) yield [path, m];
  }

  /** The token layers of {@link tokenWrappers} (tied ones included), by their wrapper's path. */
  *tokenLayers(): IterableIterator<[string, TrainableTokensLayer]> {
    for (const [path, w] of this.tokenWrappers()) yield [path, w.tokenAdapter];
  }

  /**
   * The layers that hold adapter weights and merge them (LoRA layers, then trainable-token layers), in
   * one walk of the model: what merging, unmerging, enabling and mixed batches act on.
   */
  private tunerLayers(): (TunerLayer | TrainableTokensLayer)[] {
    const lora: TunerLayer[] = [];
    const tokens: TrainableTokensLayer[] = [];
    for (const [, m] of this.model.namedModules()) {
      if (isTunerLayer(m)) lora.push(m);
      else if (m instanceof TrainableTokensWrapper) tokens.push(m.tokenAdapter);
    }
    return [...lora, ...tokens];
  }

  /**
   * Makes `name` the active (and trainable) adapter (PEFT's `set_adapter`), or several at once: a list
   * activates every adapter in it, and their contributions add up in each layer (PEFT's
   * `base_model.set_adapter([...])`). Merged layers are unmerged first, with PEFT's warning; a
   * modules_to_save module may serve one adapter only, as in PEFT.
   *
   * @example
   * ```ts
   * peft.setAdapter('sql');
   * peft.setAdapter(['sql', 'style']);   // both at once
   * peft.activeAdapters;                 // ['sql', 'style']
   * ```
   */
  setAdapter(name: string | string[]): void {
    const names = typeof name === 'string' ? [name] : [...new Set(name)];
    if (names.length === 0) throw new Error('setAdapter needs at least one adapter name');
    for (const n of names) if (!this.peftConfig.has(n)) throw new Error(`Adapter ${n} not found.`);
    for (const [path, w] of this.modulesToSaveWrappers()) {
      const held = names.filter((n) => w.modulesToSave.has(n));
      if (held.length > 1)
        throw new Error(
          `Attempted to set multiple (${JSON.stringify(held)}) adapters at once for modules_to_save (${path}).`,
        );
    }
    // as PEFT's set_adapter: merged layers are unmerged first (the merged adapter would otherwise stay in the weights)
    const merged = this.tunerLayers().filter((l) => l.mergedAdapters.length);
    if (merged.length) {
      console.warn('Adapter cannot be set when the model is merged. Unmerging the model first.');
      for (const l of merged) l.unmerge();
    }
    this.active = names;
    for (const [, layer] of this.loraLayers()) layer.activeAdapters = names.filter((n) => layer.settings.has(n));
    for (const [, w] of this.modulesToSaveWrappers())
      w.activeAdapter = names.find((n) => w.modulesToSave.has(n)) ?? null;
    for (const [, t] of this.tokenLayers()) t.activeAdapters = names.filter((n) => t.tokenIndices.has(n));
    this.markTrainable();
  }

  /** The active adapters (PEFT's `active_adapters`); one unless {@link setAdapter} was given a list. */
  get activeAdapters(): string[] {
    return [...this.active];
  }

  /** The (first) active adapter (PEFT's `active_adapter`). */
  get activeAdapter(): string {
    return this.active[0] as string;
  }

  /** Adapter names, in the order they were added. */
  get adapters(): string[] {
    return [...this.peftConfig.keys()];
  }

  private markTrainable(): void {
    // per active adapter, as PEFT's _mark_only_adapters_as_trainable: its LoRA weights, its modules_to_save
    // copies, and the biases its bias mode trains ('lora_only': of layers holding it; 'all': every bias)
    const biases = new Set<unknown>();
    let allBiases = false;
    for (const n of this.active) {
      const c = this.peftConfig.get(n) as LoraConfig;
      if (c.inferenceMode) continue;
      if (c.bias === 'all') allBiases = true;
      if (c.bias === 'lora_only')
        for (const [, l] of this.loraLayers()) if (l.settings.has(n) && baseBias(l)) biases.add(baseBias(l));
    }
    const training = this.active.filter((n) => !(this.peftConfig.get(n) as LoraConfig).inferenceMode);
    // LoRA's A and B, the modules variants train (DoRA's magnitudes), trainable-token rows
    const adapterWeights = new RegExp(
      `\\.(${[...trainableModuleNames(), PEFT_SUFFIX.tokens].map((n) => n.replaceAll('.', '\\.')).join('|')})\\.`,
    );
    for (const [name, p] of this.namedParameters()) {
      const parts = name.split('.');
      const isActiveLora = adapterWeights.test(name) && training.some((n) => parts.includes(n));
      const isBias = (allBiases && name.endsWith('.bias') && !name.includes('.lora_')) || biases.has(p);
      const isSavedModule = training.some((n) => name.includes(`.modules_to_save.${n}.`));
      p.trainable = isActiveLora || isBias || isSavedModule;
    }
  }

  /** Turns every LoRA layer off (the base model alone), PEFT's `disable_adapter`. */
  disableAdapters(): void {
    for (const l of this.tunerLayers()) l.disableAdapters = true;
    for (const [, w] of this.modulesToSaveWrappers()) w.disabled = true;
  }

  enableAdapters(): void {
    for (const l of this.tunerLayers()) l.disableAdapters = false;
    for (const [, w] of this.modulesToSaveWrappers()) w.disabled = false;
  }

  /**
   * Merges the active adapter into the base weights (PEFT's `merge_adapter`). With `safeMerge`, every
   * merged weight is checked for NaN/Inf first (PEFT's error names the broken adapter); that check
   * reads the backend, so a safe merge returns a Promise.
   *
   * @example
   * ```ts
   * peft.mergeAdapter();                           // fast, synchronous
   * await peft.mergeAdapter({ safeMerge: true });   // refuses a broken adapter
   * ```
   */
  mergeAdapter(options?: { adapterNames?: string[]; safeMerge?: false }): void;
  mergeAdapter(options: { adapterNames?: string[]; safeMerge: true }): Promise<void>;
  mergeAdapter(options: { adapterNames?: string[]; safeMerge?: boolean }): void | Promise<void>;
  mergeAdapter(options: { adapterNames?: string[]; safeMerge?: boolean } = {}): void | Promise<void> {
    // LoRA layers, then trainable-token rows (all merged before any is unloaded: a tied layer reads its owner's rows)
    const layers = this.tunerLayers();
    if (!options.safeMerge) {
      for (const l of layers) l.merge({ adapterNames: options.adapterNames });
      return;
    }
    return (async () => {
      for (const l of layers) await l.merge({ adapterNames: options.adapterNames, safeMerge: true });
    })();
  }

  unmergeAdapter(): void {
    for (const l of this.tunerLayers()) l.unmerge();
  }

  /**
   * Merges the active adapter and puts the base layers back (PEFT's `merge_and_unload`): returns
   * the user's model with plain Linear layers holding W + ΔW. LoRA weights are freed. With
   * `safeMerge`, the merged weights are checked for NaN/Inf first and a Promise is returned.
   *
   * @example
   * ```ts
   * const merged = peft.mergeAndUnload();
   * const checked = await peft.mergeAndUnload({ safeMerge: true });
   * ```
   */
  mergeAndUnload(options?: { safeMerge?: false }): Module;
  mergeAndUnload(options: { safeMerge: true }): Promise<Module>;
  mergeAndUnload(options: { safeMerge?: boolean }): Module | Promise<Module>;
  mergeAndUnload(options: { safeMerge?: boolean } = {}): Module | Promise<Module> {
    if (!options.safeMerge) {
      this.mergeAdapter();
      return this.unloadLayers(true);
    }
    // every layer checked and merged before any is unloaded: a broken adapter leaves the PeftModel usable
    return this.mergeAdapter({ safeMerge: true }).then(() => this.unloadLayers(true));
  }

  /** Removes every LoRA layer without merging (PEFT's `unload`). */
  unload(): Module {
    return this.unloadLayers(false);
  }

  /** Puts the base layers back (their adapters merged already, or dropped); `merged` picks the modules_to_save copy. */
  private unloadLayers(merge: boolean): Module {
    for (const [path, layer] of [...this.loraLayers()]) {
      for (const name of [...layer.settings.keys()]) layer.deleteAdapter(name);
      this.model.setSubmodule(path, layer.baseLayer);
    }
    // merged: the active adapter's trained copy takes the module's place; unloaded: the original does
    for (const [path, w] of [...this.modulesToSaveWrappers()]) {
      const keep = merge && w.activeAdapter !== null ? w.modulesToSave.get(w.activeAdapter) : w.originalModule;
      for (const n of w.modulesToSave.keys()) if (w.modulesToSave.get(n) !== keep) w.modulesToSave.delete(n)?.dispose();
      if (keep !== w.originalModule) w.originalModule.dispose();
      this.model.setSubmodule(path, keep);
    }
    // token wrappers (their rows merged already by mergeAdapter when merging)
    for (const [path, w] of [...this.tokenWrappers()]) {
      for (const name of w.tokenAdapter.adapters) w.tokenAdapter.deleteAdapter(name);
      this.model.setSubmodule(path, w.tokenAdapter.baseLayer);
    }
    this.peftConfig.clear();
    return this.model;
  }

  /** Trainable and total parameter counts (PEFT's `get_nb_trainable_parameters`). */
  getNbTrainableParameters(): { trainable: number; all: number } {
    let trainable = 0;
    let all = 0;
    for (const p of this.parameters()) {
      all += p.size;
      if (p.trainable) trainable += p.size;
    }
    return { trainable, all };
  }

  /** Prints PEFT's one-line summary. */
  printTrainableParameters(): string {
    const { trainable, all } = this.getNbTrainableParameters();
    const line = `trainable params: ${trainable.toLocaleString('en-US')} || all params: ${all.toLocaleString('en-US')} || trainable%: ${((100 * trainable) / all).toFixed(4)}`;
    console.log(line);
    return line;
  }
}

/**
 * PEFT's default `target_modules` per transformers `model_type`, for the architectures `@lora/models`
 * implements (PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
 */
export const DEFAULT_TARGET_MODULES: Readonly<Record<string, readonly string[]>> = {
  llama: ['q_proj', 'v_proj'],
  qwen2: ['q_proj', 'v_proj'],
};

/**
 * The target modules PEFT fills in when a config leaves them out: by the model's `config.modelType`
 * (or `model_type`), read duck-typed so that any model class with a Hugging Face config works.
 */
function defaultTargetModules(model: Module): string[] {
  const config = (model as { config?: { modelType?: unknown; model_type?: unknown } }).config;
  const type = config?.modelType ?? config?.model_type;
  const defaults = typeof type === 'string' ? DEFAULT_TARGET_MODULES[type] : undefined;
  if (defaults) return [...defaults];
  throw new LoraConfigError(
    `Please specify \`target_modules\` in \`peft_config\`: targetModules is not set and ${
      type === undefined
        ? `the model (${model.constructor.name}) has no config.modelType to choose defaults by`
        : `model type ${describeValue(type)} has no default target modules here (defaults exist for ${Object.keys(DEFAULT_TARGET_MODULES).join(', ')})`
    }. Set targetModules to module names from model.namedModules(), e.g. ['q_proj', 'v_proj'], or 'all-linear'`,
    { field: 'targetModules' },
  );
}

/**
 * Wraps `model`'s target layers with LoRA (PEFT's `get_peft_model`). The model is changed in place
 * and held by the returned PeftModel; only the adapter's parameters stay trainable.
 *
 * @example
 * ```ts
 * const peft = getPeftModel(model, loraConfig({ r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'] }));
 * peft.printTrainableParameters();
 * ```
 */
export function getPeftModel(
  model: Module,
  config: LoraConfig | LoraConfigFields,
  options: { adapterName?: string } = {},
): PeftModel {
  const full =
    'peftType' in config && config.peftType === 'LORA' && 'extra' in config
      ? checkLoraConfig(config as LoraConfig)
      : loraConfig(config);
  return new PeftModel(model, full, options.adapterName ?? 'default');
}
