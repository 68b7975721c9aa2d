/**
 * `initializeLoraEvaWeights`: PEFT 0.21's `initialize_lora_eva_weights` and `_load_eva_state_dict`.
 * Sets each LoRA layer's A to its EVA components, re-creates layers whose rank changed, removes LoRA
 * from layers that got rank 0, and rewrites the adapter's `rankPattern`, `alphaPattern` and
 * `targetModules` as PEFT does, so that the adapter saves and loads (in PEFT too) at its new shapes.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, PeftModel, isTunerLayer, moduleScaling } from '@lora/core';
import type { BatchSource } from '@lora/nn';
import { EvaError } from './errors';
import { type EvaStateDict, type GetEvaStateDictOptions, getEvaStateDict } from './eva-state-dict';
import { findMinimalTargetModules } from './minimal-targets';

/** PEFT's `MIN_TARGET_MODULES_FOR_OPTIMIZATION`: from this many targets on, they are written as suffixes. */
const MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20;
const PEFT_PREFIX = 'base_model.model.';

/** Options of {@link initializeLoraEvaWeights}: those of {@link getEvaStateDict}, and a state dict computed before. */
export interface InitializeLoraEvaWeightsOptions<B> extends Omit<GetEvaStateDictOptions<B>, 'peftConfig'> {
  /** Components computed before (by {@link getEvaStateDict} on this model or on the model before `getPeftModel`); no data pass then. */
  evaStateDict?: EvaStateDict;
}

/** What {@link initializeLoraEvaWeights} did, layer by layer. */
export interface EvaInitResult {
  /** The rank each LoRA layer has now, by path in the user's model (0: its LoRA was removed). */
  ranks: Record<string, number>;
  /** Layers the state dict did not cover (not Linear, e.g. an Embedding): default LoRA init, as PEFT. */
  defaultInitialized: string[];
}

/**
 * Initialises the adapter's LoRA weights with EVA (PEFT's `initialize_lora_eva_weights`): computes the
 * components from `dataloader` (see {@link getEvaStateDict}) unless `evaStateDict` is given, then for
 * each LoRA layer sets A to the components (B stays zero, so the model's output is unchanged), at the
 * new rank where the redistribution changed it (alpha scaled to keep α/r when
 * `evaConfig.adjustScalingFactors`), removing LoRA where the rank is 0. The adapter's config gets
 * PEFT's `rankPattern`, `alphaPattern` and `targetModules`. Everything is checked before the first layer
 * changes: a failure leaves the model as it was.
 *
 * @example
 * ```ts
 * import '@lora/eva'; // registers init_lora_weights 'eva'
 * const peft = getPeftModel(model, { r: 8, targetModules: ['q_proj', 'k_proj', 'v_proj'], initLoraWeights: 'eva' });
 * await initializeLoraEvaWeights(peft, batches);      // batches: [{ inputIds, attentionMask }, …]
 * peft.peftConfig.get('default')!.rankPattern;         // { 'model.layers.0.self_attn.q_proj': 12, … }
 * ```
 */
export async function initializeLoraEvaWeights<B = unknown>(
  peft: PeftModel,
  dataloader?: BatchSource<B> | null,
  options: InitializeLoraEvaWeightsOptions<B> = {},
): Promise<EvaInitResult> {
  if (!(peft instanceof PeftModel))
    throw new EvaError('bad-model', 'model must be a PeftModel: call getPeftModel(model, config) first');
  const adapter = options.adapterName ?? 'default';
  if (peft.activeAdapters.length > 1)
    throw new EvaError(
      'bad-model',
      `\`initialize_lora_eva_weights\` currently only works with a single active adapter (active: ${peft.activeAdapters.join(', ')}); call peft.setAdapter('${adapter}') first`,
    );
  const config = peft.peftConfig.get(adapter);
  if (!config)
    throw new EvaError(
      'bad-model',
      `the PeftModel has no adapter '${adapter}' (adapters: ${peft.adapters.join(', ')}); pass adapterName`,
    );
  if (config.initLoraWeights !== 'eva')
    throw new EvaError(
      'bad-model',
      `\`initialize_lora_eva_weights\` can only be used with \`init_lora_weights='eva'\`; adapter '${adapter}' has ${JSON.stringify(config.initLoraWeights)}. Create it with initLoraWeights: 'eva'`,
    );
  await peft.initialized(adapter);
  let stateDict = options.evaStateDict;
  let owned = false;
  if (stateDict === undefined) {
    if (dataloader === undefined || dataloader === null)
      throw new EvaError('no-data', 'dataloader is required if eva_state_dict is not provided');
    const { evaStateDict: _sd, ...rest } = options;
    stateDict = await getEvaStateDict(peft, dataloader, { ...rest, adapterName: adapter });
    owned = true;
  }
  try {
    return loadEvaStateDict(peft, stateDict, adapter, config, options.warn ?? console.warn);
  } finally {
    if (owned) tf.dispose(Object.values(stateDict));
  }
}

/** PEFT's `_load_eva_state_dict`, with every entry checked against its layer first. */
function loadEvaStateDict(
  peft: PeftModel,
  stateDict: EvaStateDict,
  adapter: string,
  config: LoraConfig,
  warn: (message: string) => void,
): EvaInitResult {
  const layers = [...peft.loraLayers()].filter(([, l]) => l.settings.has(adapter));
  const otherModuleNames = [...peft.namedModules()]
    .filter(([, m]) => !isTunerLayer(m))
    .map(([name]) => (name.startsWith(PEFT_PREFIX) ? name.slice(PEFT_PREFIX.length) : name));
  // a key is the module name in the PeftModel (as PEFT), or its path in the user's model (a state dict
  // computed on the model before getPeftModel, which PEFT would silently miss)
  const entryOf = (path: string): [string, tf.Tensor2D] | undefined => {
    for (const key of [`${PEFT_PREFIX}${path}`, path])
      if (key in stateDict) return [key, stateDict[key] as tf.Tensor2D];
    return undefined;
  };
  const plan: { path: string; w: tf.Tensor2D | null; r: number; alpha: number }[] = [];
  const known = new Set<string>();
  for (const [path, layer] of layers) {
    const { r, alpha } = moduleScaling(config, path);
    const entry = layer.kind === 'linear' ? entryOf(path) : undefined;
    if (!entry) {
      plan.push({ path, w: null, r, alpha });
      continue;
    }
    const [key, w] = entry;
    known.add(key);
    const inFeatures = layer.factorA(adapter).shape[1] as number;
    const fits =
      w instanceof tf.Tensor &&
      w.rank === 2 &&
      (w.shape[0] === 0 || (w.shape[1] === inFeatures && (w.shape[0] as number) <= inFeatures));
    if (!fits)
      throw new EvaError(
        'bad-state-dict',
        `eva state dict entry '${key}' is ${
          w instanceof tf.Tensor ? `a tensor of shape [${w.shape.join(', ')}]` : typeof w
        }; the layer takes [rank, ${inFeatures}] with rank at most ${inFeatures} (its in_features). Compute it with getEvaStateDict on this model`,
      );
    plan.push({ path, w, r, alpha });
  }
  const unused = Object.keys(stateDict).filter((k) => !known.has(k));
  if (unused.length)
    warn(
      `these eva state dict entries match no LoRA layer of adapter '${adapter}' and were ignored: ${unused.slice(0, 8).join(', ')}${unused.length > 8 ? ', …' : ''}`,
    );

  const ranks: Record<string, number> = {};
  const kept: string[] = [];
  const missing: string[] = [];
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const { path, w, r, alpha: given } of plan) {
    let alpha = given;
    const layer = peft.model.getSubmodule(path);
    if (!isTunerLayer(layer)) continue;
    let newRank: number;
    if (w) {
      newRank = w.shape[0] as number;
      if (newRank === 0) {
        // no component: the layer loses this adapter's LoRA (and becomes its base layer when no other is left)
        layer.deleteAdapter(adapter);
        if (layer.settings.size === 0) peft.model.setSubmodule(path, layer.baseLayer);
        ranks[path] = 0;
        continue;
      }
      if (newRank !== r && config.evaConfig?.adjustScalingFactors !== false) alpha *= newRank / r;
      if (newRank !== r)
        peft.updateAdapterLayer(path, adapter, { r: newRank, loraAlpha: alpha, initLoraWeights: 'eva' });
      tf.tidy(() => layer.factorA(adapter).assign(tf.cast(w, 'float32')));
      kept.push(path);
    } else {
      peft.updateAdapterLayer(path, adapter, { r, loraAlpha: alpha, initLoraWeights: true });
      missing.push(path);
      newRank = r;
    }
    ranks[path] = newRank;
    if (newRank !== config.r) rankPattern[path] = newRank;
    if (alpha !== config.loraAlpha) alphaPattern[path] = alpha;
  }
  let targetModules: string[] = [...kept, ...missing];
  if (targetModules.length >= MIN_TARGET_MODULES_FOR_OPTIMIZATION)
    targetModules = findMinimalTargetModules(targetModules, otherModuleNames);
  const updated = peft.peftConfig.get(adapter) as LoraConfig;
  peft.peftConfig.set(adapter, { ...updated, targetModules, rankPattern, alphaPattern });
  if (missing.length)
    warn(
      `the following layers were initialized with init_lora_weights=True because they were not found in the eva state_dict: ${missing.join(', ')}\ncurrently the following lora modules are not supported by EVA: Embedding, convolution layers`,
    );
  return { ranks, defaultInitialized: missing };
}
