import { fullMatch } from '../patterns';
import type * as tf from '@tensorflow/tfjs-core';
import { Embedding, Linear, type Module } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import { LoraEmbedding } from '../layers/lora-embedding';
import { LoraLinear } from '../layers/lora-linear';
import { inputEmbeddingsPath, outputEmbeddingsPath, unwrapLayer } from '../model-embeddings';
import { TrainableTokensLayer } from '../layers/trainable-tokens';
import { PEFT_KEY_PREFIX } from './peft-keys';

/** PEFT's `save_embedding_layers`: always, never, or `'auto'` (PEFT's default, see {@link embeddingLayersStateDict}). */
export type SaveEmbeddingLayers = boolean | 'auto';

/** PEFT's `EMBEDDING_LAYER_NAMES`. */
const EMBEDDING_LAYER_NAMES = ['embed_tokens', 'lm_head'];

/** What a PeftModel looks like to this file (kept structural so that peft-model.ts need not be imported). */
interface AdapterModel extends Module {
  model: Module;
  adapters: string[];
  peftConfig: Map<string, LoraConfig>;
}

/** PEFT's `_remove_adapter_name_from_state_dict_key`: `x.lora_A.default.weight` → `x.lora_A.weight`, `x.delta.default` → `x.delta`. */
export function removeAdapterName(key: string, adapterName: string): string {
  if (!key.includes('.')) return key;
  const tail = `.${adapterName}`;
  if (key.endsWith(tail)) return key.slice(0, -tail.length);
  const dot = key.lastIndexOf('.');
  const head = key.slice(0, dot);
  return `${head.endsWith(tail) ? head.slice(0, -tail.length) : head}${key.slice(dot)}`;
}

/**
 * The model's parameters as PEFT's `model.state_dict()` names them for one adapter's file: every
 * parameter under every module path (a tied weight under each of its names, and a tied token layer's
 * shared rows under its own path too, as torch registers them there), other adapters' entries left
 * out (PEFT's `_filter_state_dict_for_adapter_name`), the adapter name removed. The tensors are the
 * model's own: read them, do not dispose them.
 */
export function peftNamedWeights(model: AdapterModel, adapterName: string): Record<string, tf.Variable> {
  const others = model.adapters.filter((a) => a !== adapterName);
  const out: Record<string, tf.Variable> = {};
  const add = (key: string, p: tf.Variable) => {
    if (others.some((o) => key.includes(`.${o}.`) || key.endsWith(`.${o}`))) return;
    const k = removeAdapterName(key, adapterName);
    if (!(k in out)) out[k] = p;
  };
  for (const [path, m] of model.namedModules()) {
    for (const [k, p] of m.namedParameters(path, false)) add(k, p);
    if (m instanceof TrainableTokensLayer && m.tiedAdapter) {
      for (const n of m.trainableTokensDelta.keys())
        add(`${path}.trainable_tokens_delta.${n}`, m.trainableTokensDelta.get(n));
    }
  }
  return out;
}

/**
 * Whether the config's `target_modules` name an embedding layer, as PEFT's `get_peft_model_state_dict`
 * decides: a list containing `embed_tokens` or `lm_head`, or a regular expression that fully matches a
 * module path ending in one of them (`'all-linear'` never counts).
 */
export function embeddingIsTargeted(model: Module, config: LoraConfig): boolean {
  const t = config.targetModules;
  if (typeof t === 'string') {
    if (t.toLowerCase() === 'all-linear') return false;
    const named = new RegExp(`^(.*\\.)?(${EMBEDDING_LAYER_NAMES.join('|')})$`);
    return [...model.namedModules()].some(([k]) => named.test(k) && fullMatch(t, k, 'target_modules'));
  }
  return Array.isArray(t) && EMBEDDING_LAYER_NAMES.some((n) => t.includes(n));
}

/** Options of {@link embeddingLayersStateDict}. */
export interface EmbeddingLayersOptions {
  saveEmbeddingLayers?: SaveEmbeddingLayers;
  /** The base checkpoint's vocabulary size (its config.json `vocab_size`), for `'auto'`'s resize rule. */
  baseVocabSize?: number;
  warn?: (message: string) => void;
}

/** Rows of the model's input embedding (its vocabulary size), or undefined. */
export function inputVocabSize(model: Module): number | undefined {
  const path = inputEmbeddingsPath(model);
  if (path === null) return undefined;
  const m = unwrapLayer(model.getSubmodule(path));
  return m instanceof Embedding ? m.numEmbeddings : m instanceof Linear ? m.outFeatures : undefined;
}

/**
 * Decides `save_embedding_layers` as PEFT does. `'auto'` saves the embeddings when `target_modules`
 * name `embed_tokens` or `lm_head` (not with `trainable_token_indices`, whose point is a small file),
 * or when the input embedding's vocabulary differs from `baseVocabSize` (resized while fine-tuning).
 */
export function resolveSaveEmbeddingLayers(
  model: AdapterModel,
  adapterName: string,
  options: EmbeddingLayersOptions,
): boolean {
  const option = options.saveEmbeddingLayers ?? 'auto';
  if (option !== 'auto') return option;
  const warn = options.warn ?? console.warn;
  const config = model.peftConfig.get(adapterName) as LoraConfig;
  if (embeddingIsTargeted(model.model, config) && config.trainableTokenIndices === null) {
    warn('Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.');
    return true;
  }
  const vocab = inputVocabSize(model.model);
  if (vocab !== undefined && options.baseVocabSize !== undefined && vocab !== options.baseVocabSize) {
    warn('Setting `save_embedding_layers` to `True` as the embedding layer has been resized during finetuning.');
    return true;
  }
  return false;
}

/**
 * The full weights of the input and output embeddings to save with an adapter, under PEFT's names
 * (`get_peft_model_state_dict` with `save_embedding_layers`): a layer LoRA targets is saved as its
 * `base_layer`, one it does not target under its own path (with a trainable-tokens wrapper's rows
 * and base weight); when the embeddings are targeted, an untargeted one is left out. Empty when
 * `resolveSaveEmbeddingLayers` says no. The tensors are the model's own.
 *
 * @example
 * ```ts
 * Object.keys(embeddingLayersStateDict(peft, 'default', { saveEmbeddingLayers: true }));
 * // ['base_model.model.model.embed_tokens.weight', 'base_model.model.lm_head.weight']
 * ```
 */
export function embeddingLayersStateDict(
  model: AdapterModel,
  adapterName: string,
  options: EmbeddingLayersOptions = {},
): Record<string, tf.Tensor> {
  if (!resolveSaveEmbeddingLayers(model, adapterName, options)) return {};
  const config = model.peftConfig.get(adapterName) as LoraConfig;
  const paths = [inputEmbeddingsPath(model.model), outputEmbeddingsPath(model.model)].filter(
    (p): p is string => p !== null,
  );
  if (paths.length === 0) {
    (options.warn ?? console.warn)(
      'Could not identify embedding layer(s) because the model is not a 🤗 transformers model. (@lora looks for a getInputEmbeddings() / getOutputEmbeddings() method on the model, else modules named embed_tokens / lm_head.)',
    );
    return {};
  }
  const targeted = embeddingIsTargeted(model.model, config);
  const weights = peftNamedWeights(model, adapterName);
  const out: Record<string, tf.Tensor> = {};
  for (const path of new Set(paths)) {
    const layer = model.model.getSubmodule(path);
    const wrapped =
      (layer instanceof LoraLinear || layer instanceof LoraEmbedding) &&
      (layer.baseLayer instanceof Linear || layer.baseLayer instanceof Embedding);
    if (targeted && !wrapped) continue;
    const prefix = `${PEFT_KEY_PREFIX}${targeted ? `${path}.base_layer` : path}.`;
    for (const [k, t] of Object.entries(weights)) if (k.startsWith(prefix)) out[k] = t;
  }
  return out;
}
