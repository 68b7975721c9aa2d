import * as tf from '@tensorflow/tfjs-core';
import {
  type HubOptions,
  type ModelFiles,
  SafetensorsError,
  describeValue,
  openFiles,
  parseSafetensors,
  serializeSafetensors,
} from '@lora/tensor';
import { AdapterFileError } from '../errors';
import { type Module, type StoredWeightLayer, isStoredWeightLayer, withoutInit } from '@lora/nn';
import { type LoraConfig, loraConfigFromJson, loraConfigToJson } from '../lora-config';
import { baseBias } from '../layers/lora-layer';
import { PEFT_SUFFIX, peftKey } from './peft-keys';
import {
  type EmbeddingLayersOptions,
  type SaveEmbeddingLayers,
  embeddingIsTargeted,
  embeddingLayersStateDict,
  peftNamedWeights,
} from './embedding-layers';
import { PeftModel } from '../peft-model';
import {
  type InitialAdapter,
  checkWeightConversion,
  convertToLoraTensors,
  convertedLoraConfig,
} from './weight-conversion';

/**
 * The adapter's tensors under PEFT's saved names (`base_model.model.<path>.lora_A.weight`, the
 * adapter name removed), as `get_peft_model_state_dict`. The tensors are the model's own: read them,
 * do not dispose them.
 *
 * @example
 * ```ts
 * Object.keys(adapterStateDict(peft)); // ['base_model.model.lin0.lora_A.weight', 'base_model.model.lin0.lora_B.weight']
 * ```
 */
export function adapterStateDict(model: PeftModel, adapterName = 'default'): Record<string, tf.Tensor> {
  if (!model.peftConfig.has(adapterName))
    throw new Error(`adapter '${adapterName}' does not exist; adapters: ${model.adapters.join(', ')}`);
  const out: Record<string, tf.Tensor> = {};
  for (const [path, layer] of model.loraLayers()) {
    if (!layer.settings.has(adapterName)) continue;
    for (const [suffix, t] of Object.entries(layer.savedTensors(adapterName))) out[peftKey(path, suffix)] = t;
  }
  // modules_to_save: the adapter's copy, under the module's own names
  for (const [path, w] of model.modulesToSaveWrappers()) {
    if (!w.modulesToSave.has(adapterName)) continue;
    for (const [k, t] of w.modulesToSave.get(adapterName).namedParameters()) out[peftKey(path, k)] = t;
  }
  // trainable tokens: the rows of each token layer that owns them (a tied layer's are its owner's)
  for (const [path, w] of model.tokenWrappers()) {
    const t = w.tokenAdapter;
    if (!t.tiedAdapter && t.tokenIndices.has(adapterName))
      out[peftKey(path, PEFT_SUFFIX.tokens)] = t.trainableTokensDelta.get(adapterName);
  }
  // biases trained with the adapter travel with it (PEFT's bias 'lora_only' / 'all')
  const bias = (model.peftConfig.get(adapterName) as LoraConfig).bias;
  if (bias === 'lora_only') {
    for (const [path, layer] of model.loraLayers()) {
      const b = baseBias(layer);
      if (layer.settings.has(adapterName) && b) out[peftKey(path, PEFT_SUFFIX.baseBias)] = b;
    }
  } else if (bias === 'all') {
    // every bias under PEFT's state-dict names: other adapters' copies left out, this adapter's name removed
    for (const [k, p] of Object.entries(peftNamedWeights(model, adapterName)))
      if (k.endsWith('.bias') && !k.includes('.lora_')) out[k] = p;
  }
  return out;
}

/** Options of {@link serializeAdapter}. */
export interface SerializeAdapterOptions extends EmbeddingLayersOptions {
  /**
   * Converts a PiSSA/OLoRA adapter into a plain LoRA on the unchanged base model (PEFT's
   * `path_initial_model_for_weight_conversion`, in memory): the adapter as serialized right after
   * `getPeftModel`, before training.
   */
  initialAdapter?: InitialAdapter;
}

/**
 * Weights of 16-bit layers (a base embedding saved with the adapter, from a model loaded with
 * `weightStorage: 'checkpoint'`) decoded to float32 and written in their own dtype, as PEFT saves a
 * bf16 model's embedding in bf16. The caller disposes `decoded`.
 */
function decodeStoredWeights(
  model: PeftModel,
  tensors: Record<string, tf.Tensor>,
): { decoded: Record<string, tf.Tensor>; dtypes: Record<string, 'BF16' | 'F16'> } {
  const stored = new Map<tf.Tensor, StoredWeightLayer>();
  for (const [, m] of model.namedModules())
    if (isStoredWeightLayer(m)) stored.set(m.getParameter('weight') as tf.Tensor, m);
  const decoded: Record<string, tf.Tensor> = {};
  const dtypes: Record<string, 'BF16' | 'F16'> = {};
  if (stored.size === 0) return { decoded, dtypes };
  for (const [k, t] of Object.entries(tensors)) {
    const layer = stored.get(t);
    if (!layer) continue;
    decoded[k] = layer.decodeWeight();
    dtypes[k] = layer.storageFormat === 'f16' ? 'F16' : 'BF16';
  }
  return { decoded, dtypes };
}

async function encodeAdapter(
  model: PeftModel,
  adapterName: string,
  options: SerializeAdapterOptions,
  checked: boolean,
): Promise<{ config: string; weights: Uint8Array }> {
  const config = model.peftConfig.get(adapterName);
  if (!config) throw new Error(`adapter '${adapterName}' does not exist; adapters: ${model.adapters.join(', ')}`);
  const warn = options.warn ?? console.warn;
  const tensors = { ...adapterStateDict(model, adapterName), ...embeddingLayersStateDict(model, adapterName, options) };
  if (!options.initialAdapter) {
    const { decoded, dtypes } = decodeStoredWeights(model, tensors);
    try {
      return {
        config: loraConfigToJson(config),
        weights: await serializeSafetensors(
          { ...tensors, ...decoded },
          { metadata: { format: 'pt' }, ...(Object.keys(dtypes).length ? { dtype: dtypes } : {}) },
        ),
      };
    } finally {
      tf.dispose(Object.values(decoded));
    }
  }
  if (!checked) checkWeightConversion(config, warn);
  const initial = parseSafetensors(options.initialAdapter.weights, { file: 'initial adapter' }).tensors;
  let converted: Record<string, tf.Tensor> = {};
  try {
    converted = convertToLoraTensors(tensors, initial, { warn });
    const weights = await serializeSafetensors(converted, { metadata: { format: 'pt' } });
    return { config: loraConfigToJson(convertedLoraConfig(config)), weights };
  } finally {
    tf.dispose([...Object.values(initial), ...Object.values(converted)]);
  }
}

/**
 * One adapter as the two files PEFT writes (`adapter_config.json`, `adapter_model.safetensors`),
 * in memory: what a browser saves or uploads. `saveEmbeddingLayers` (default `'auto'`) adds the
 * full embedding weights as PEFT's `save_embedding_layers`; `initialAdapter` converts a
 * PiSSA/OLoRA adapter to a plain LoRA (rank doubled) as PEFT's `path_initial_model_for_weight_conversion`.
 *
 * @example
 * ```ts
 * const { config, weights } = await serializeAdapter(peft);
 * // PiSSA: keep the adapter as it was before training, then convert after training
 * const initial = await serializeAdapter(pissa);
 * // … train …
 * const lora = await serializeAdapter(pissa, 'default', { initialAdapter: initial });
 * ```
 */
export function serializeAdapter(
  model: PeftModel,
  adapterName = 'default',
  options: SerializeAdapterOptions = {},
): Promise<{ config: string; weights: Uint8Array }> {
  return encodeAdapter(model, adapterName, options, false);
}

/** Options of {@link saveAdapter}. */
export interface SaveAdapterOptions {
  /** Adapters to save (default: all). */
  selectedAdapters?: string[];
  /** PEFT's `save_embedding_layers` (default `'auto'`); the vocabulary check reads `<baseModelNameOrPath>/config.json`. */
  saveEmbeddingLayers?: SaveEmbeddingLayers;
  /**
   * PEFT's `path_initial_model_for_weight_conversion`: the directory where the PiSSA/OLoRA adapter
   * was saved before training. The saved adapter becomes a plain LoRA for the unchanged base model,
   * and (as PEFT) the initial directory's `adapter_config.json` is rewritten with
   * `init_lora_weights: true`, so that loading it never re-decomposes the base weights.
   */
  pathInitialModelForWeightConversion?: string;
  /**
   * Replace an existing adapter directory at `dir` (default false: an existing directory that is not
   * empty is an error). Only a directory holding PEFT adapter files is replaced (its README.md is kept),
   * and as a whole: adapters it held that are not saved now are gone. A directory holding anything else
   * is refused even with `force`.
   */
  force?: boolean;
  warn?: (message: string) => void;
}

/** `vocab_size` of the base checkpoint's config.json, or undefined (with PEFT's warning) when there is none to read. */
async function baseVocabSize(
  fs: typeof import('node:fs/promises'),
  base: string,
  warn: (message: string) => void,
): Promise<number | undefined> {
  let text: string;
  try {
    text = await fs.readFile(`${base}/config.json`, 'utf8');
  } catch {
    warn(`Could not find a config file in ${base} - will assume that the vocabulary was not modified.`);
    return undefined;
  }
  let json: { vocab_size?: unknown };
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${base}/config.json (baseModelNameOrPath) is not valid JSON: ${(e as Error).message}`);
  }
  return typeof json.vocab_size === 'number' ? json.vocab_size : undefined;
}

/**
 * Saves adapters in PEFT's layout: the default adapter in `dir`, others in `dir/<name>/`; each as
 * `adapter_config.json` + `adapter_model.safetensors`. Node only.
 *
 * The directory is published as one unit (`@lora/tensor/node`'s `writeOutput`): everything is written
 * into a temporary folder beside `dir` and renamed into place, so that an error, a signal or a kill
 * leaves the old directory or the complete new one, never a config that does not match its weights.
 * `dir` must not exist (an empty directory is fine) unless `force`, which replaces only a PEFT adapter
 * directory (see {@link SaveAdapterOptions.force}); unlike PEFT's `save_pretrained`, which writes into
 * whatever is there.
 *
 * `saveEmbeddingLayers` and `pathInitialModelForWeightConversion` are PEFT's `save_embedding_layers`
 * and `path_initial_model_for_weight_conversion` (see {@link SaveAdapterOptions}); as PEFT, the latter
 * rewrites the initial directory's `adapter_config.json` (atomically, once the new adapter is in place).
 *
 * @example
 * ```ts
 * await saveAdapter(peft, 'out/my-adapter');   // then in Python: PeftModel.from_pretrained(base, 'out/my-adapter')
 * // PiSSA / OLoRA: save the initial adapter before training, convert to a plain LoRA when saving after
 * await saveAdapter(pissa, 'out/pissa-init');
 * // … train …
 * await saveAdapter(pissa, 'out/pissa-lora', { pathInitialModelForWeightConversion: 'out/pissa-init' });
 * ```
 */
export async function saveAdapter(model: PeftModel, dir: string, options: SaveAdapterOptions = {}): Promise<string[]> {
  const names = options.selectedAdapters ?? model.adapters;
  const unknown = names.filter((n) => !model.peftConfig.has(n));
  if (unknown.length) {
    throw new Error(
      `You passed an invalid \`selected_adapters\` arguments, current supported adapter names are ${JSON.stringify(model.adapters)} - got ${JSON.stringify(names)}.`,
    );
  }
  const nodeName = '@lora/tensor/node';
  const fsName = 'node:fs/promises';
  const { writeFileAtomic, prepareOutput, outputKinds } = (await import(
    /* @vite-ignore */ nodeName
  )) as typeof import('@lora/tensor/node');
  const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
  const warn = options.warn ?? console.warn;
  const initialDir = options.pathInitialModelForWeightConversion;
  // every check on `dir` (exists, holds other files, is the initial adapter's folder, is writable) before the work
  const output = await prepareOutput(dir, {
    kind: outputKinds.adapterDirectory,
    force: options.force ?? false,
    inputs: initialDir === undefined ? [] : [{ path: initialDir, label: 'pathInitialModelForWeightConversion' }],
    warn,
  });
  try {
    const files = await encodeAdapters(model, names, options, warn, fs);
    await output.ensureSpace(files.reduce((n, f) => n + f.weights.length + f.config.length, 0));
    for (const f of files) {
      const target = f.name === 'default' ? output.target : `${output.target}/${f.name}`;
      // not recursive: after a signal has removed the temporary folder, nothing may create it again
      if (f.name !== 'default') await fs.mkdir(target);
      await fs.writeFile(`${target}/adapter_model.safetensors`, f.weights);
      await fs.writeFile(`${target}/adapter_config.json`, f.config);
    }
    await output.commit();
    for (const f of files) {
      if (initialDir === undefined) continue;
      // as PEFT: the initial directory gets the trained adapter's config with init_lora_weights true
      const adapterConfig = model.peftConfig.get(f.name) as LoraConfig;
      const initialConfig = JSON.parse(loraConfigToJson({ ...adapterConfig, initLoraWeights: true })) as Record<
        string,
        unknown
      >;
      initialConfig.inference_mode = adapterConfig.inferenceMode;
      await writeFileAtomic(`${initialDir}/adapter_config.json`, JSON.stringify(initialConfig, null, 2));
    }
    return files.map((f) => (f.name === 'default' ? dir : `${dir}/${f.name}`));
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
  }
}

/** Every adapter's two files, in memory: a failed conversion or encoding writes nothing. */
async function encodeAdapters(
  model: PeftModel,
  names: string[],
  options: SaveAdapterOptions,
  warn: (message: string) => void,
  fs: typeof import('node:fs/promises'),
): Promise<{ name: string; config: string; weights: Uint8Array }[]> {
  const initialDir = options.pathInitialModelForWeightConversion;
  const files: { name: string; config: string; weights: Uint8Array }[] = [];
  for (const name of names) {
    const adapterConfig = model.peftConfig.get(name) as LoraConfig;
    const encodeOptions: SerializeAdapterOptions = { saveEmbeddingLayers: options.saveEmbeddingLayers ?? 'auto', warn };
    const byTargets = embeddingIsTargeted(model.model, adapterConfig) && adapterConfig.trainableTokenIndices === null;
    if (encodeOptions.saveEmbeddingLayers === 'auto' && !byTargets && adapterConfig.baseModelNameOrPath) {
      encodeOptions.baseVocabSize = await baseVocabSize(fs, adapterConfig.baseModelNameOrPath, warn);
    }
    if (initialDir !== undefined) {
      checkWeightConversion(adapterConfig, warn);
      let weights: Uint8Array;
      try {
        weights = new Uint8Array(await fs.readFile(`${initialDir}/adapter_model.safetensors`));
      } catch (e) {
        throw new Error(
          `${initialDir}/adapter_model.safetensors cannot be read (${(e as Error).message}): save the PiSSA/OLoRA adapter there right after getPeftModel, before training (await saveAdapter(peft, '${initialDir}'))`,
        );
      }
      encodeOptions.initialAdapter = { weights };
    }
    const { config, weights } = await encodeAdapter(model, name, encodeOptions, true);
    files.push({ name, config, weights });
  }
  return files;
}

/** Options of {@link loadAdapter}. */
/** What {@link loadAdapter} returns. */
export interface LoadAdapterResult {
  model: PeftModel;
  missingKeys: string[];
  unexpectedKeys: string[];
}

/** Options of {@link loadAdapter}: PEFT's, and how a Hub repo id is resolved (as `fromPretrained`'s). */
export interface LoadAdapterOptions extends HubOptions {
  /** The name the adapter gets in the model (default `'default'`). */
  adapterName?: string;
  /** Keep the adapter trainable (PEFT's `is_trainable`; default false: frozen, model in eval mode). */
  isTrainable?: boolean;
  /** Missing or unexpected keys are an error instead of a warning. */
  strict?: boolean;
  /** Receives warnings (missing or unexpected keys, config keys this version ignores); default `console.warn`. */
  warn?: (message: string) => void;
}

/**
 * Loads a PEFT adapter (a Hugging Face Hub repo id or a directory in Node, or the files in memory) onto
 * `model`: a plain model is
 * wrapped as a PeftModel, a PeftModel gains the adapter. With `isTrainable: false` (PEFT's default)
 * the adapter is frozen and the model is put in eval mode (as PEFT). Keys the model lacks, or lacks in
 * the file, are reported (an error with `strict`); shapes must match. Weights of the base model saved
 * with the adapter (PEFT's `save_embedding_layers`) are loaded into the base model, as PEFT does.
 *
 * @example
 * ```ts
 * const { model: peft } = await loadAdapter(base, 'adapters/sql-lora');
 * // a Hub repo id: from the local Hugging Face cache, downloaded into it when missing (Node)
 * const { model: tuned } = await loadAdapter(base, 'user/smollm-sql-lora', { revision: 'v1' });
 * ```
 */
export async function loadAdapter(
  model: Module | PeftModel,
  files: ModelFiles,
  options: LoadAdapterOptions = {},
): Promise<LoadAdapterResult> {
  const name = options.adapterName ?? 'default';
  const warn = options.warn ?? console.warn;
  const source = await openFiles(files, { ...options, what: 'adapter directory' });
  const configFile = `${source.label}/adapter_config.json`;
  if (!(await source.has('adapter_config.json')))
    throw new AdapterFileError(
      configFile,
      'not found; is this a PEFT adapter directory (adapter_config.json and adapter_model.safetensors)? A non-default adapter is saved in a sub-folder named after it',
    );
  let json: unknown;
  try {
    json = JSON.parse(await source.text('adapter_config.json'));
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    throw new AdapterFileError(configFile, `is not valid JSON (${e.message}); PEFT writes it with save_pretrained`);
  }
  const config: LoraConfig = {
    ...loraConfigFromJson(json as Record<string, unknown>, { warn, file: configFile }),
    inferenceMode: !(options.isTrainable ?? false),
  };
  if (!(await source.has('adapter_model.safetensors'))) {
    throw new AdapterFileError(
      `${source.label}/adapter_model.safetensors`,
      `not found${(await source.has('adapter_model.bin')) ? ' (adapter_model.bin is a pickle; convert it to safetensors)' : ''}; the adapter's weights are saved there beside adapter_config.json`,
    );
  }
  const { tensors } = parseSafetensors(await source.bytes('adapter_model.safetensors'), {
    file: `${source.label}/adapter_model.safetensors`,
  });
  try {
    let peft: PeftModel;
    // The file's weights replace the initial ones, so skip random initialisation.
    const initless = { ...config, initLoraWeights: false as const };
    // withoutInit: the layers' constructors would draw random weights only for the file to replace them
    if (model instanceof PeftModel) {
      withoutInit(() => model.addAdapter(name, initless));
      peft = model;
    } else peft = withoutInit(() => new PeftModel(model, initless, name));
    let result: { missingKeys: string[]; unexpectedKeys: string[] };
    try {
      // fan_in_fan_out as corrected while wrapping (PEFT corrects the loaded config in place)
      peft.peftConfig.set(name, { ...config, fanInFanOut: (peft.peftConfig.get(name) as LoraConfig).fanInFanOut });
      const own = adapterStateDict(peft, name);
      // other keys PEFT would load into the model: embedding layers saved with the adapter (save_embedding_layers)
      const modelWeights = peftNamedWeights(peft, name);
      const missingKeys = Object.keys(own).filter((k) => !(k in tensors));
      const unexpectedKeys = Object.keys(tensors).filter((k) => !(k in own) && !(k in modelWeights));
      if ((options.strict ?? false) && (missingKeys.length || unexpectedKeys.length)) {
        throw new AdapterFileError(
          `${source.label}/adapter_model.safetensors`,
          `missing keys ${describeValue(missingKeys, 300)}, unexpected keys ${describeValue(unexpectedKeys, 300)}; was it saved for another model, or by another adapter type?`,
        );
      }
      // as PEFT's from_pretrained (its wording), and the keys it ignores, which PEFT leaves in its result only
      if (missingKeys.length)
        warn(`Found missing adapter keys while loading the checkpoint: ${describeValue(missingKeys, 500)}.`);
      if (unexpectedKeys.length)
        warn(
          `${source.label}/adapter_model.safetensors has keys the model has no place for; they were ignored: ${describeValue(unexpectedKeys, 500)}`,
        );
      // every shape checked before the first weight is written
      // a 16-bit layer's weight (an embedding saved with the adapter) is written through the layer: rounded and packed
      const stored = new Map<tf.Tensor, StoredWeightLayer>();
      for (const [, m] of peft.namedModules())
        if (isStoredWeightLayer(m)) stored.set(m.getParameter('weight') as tf.Tensor, m);
      const writes: [tf.Variable, tf.Tensor][] = [];
      const storedWrites: [StoredWeightLayer, tf.Tensor][] = [];
      for (const [k, t] of Object.entries(tensors)) {
        const target = own[k] ?? modelWeights[k];
        if (!target) continue;
        const layer = stored.get(target);
        if (layer) {
          const shape = layer.weightShape;
          if (t.shape.join(',') !== shape.join(','))
            throw new SafetensorsError(
              { file: `${source.label}/adapter_model.safetensors`, tensor: k, field: 'shape' },
              `shape [${t.shape.join(', ')}] does not fit the model's [${shape.join(', ')}]; was the adapter trained on another base model?`,
            );
          storedWrites.push([layer, t]);
          continue;
        }
        if (t.shape.join(',') !== target.shape.join(',')) {
          throw new SafetensorsError(
            { file: `${source.label}/adapter_model.safetensors`, tensor: k, field: 'shape' },
            `shape [${t.shape.join(', ')}] does not fit the model's [${target.shape.join(', ')}]; was the adapter trained on another base model or rank?`,
          );
        }
        writes.push([target as tf.Variable, t]);
      }
      for (const [target, t] of writes) tf.tidy(() => target.assign(t));
      for (const [layer, t] of storedWrites) layer.setWeight(t);
      result = { missingKeys, unexpectedKeys };
    } catch (e) {
      // nothing of the failed adapter stays: its layers leave the user's model (or the PeftModel)
      if (model instanceof PeftModel) model.deleteAdapter(name);
      else peft.unload();
      throw e;
    }
    peft.setAdapter(peft.activeAdapters);
    // as PEFT's load_adapter: an adapter loaded for inference puts the model in eval mode (no dropout)
    if (!(options.isTrainable ?? false)) peft.eval();
    return { model: peft, ...result };
  } finally {
    tf.dispose(Object.values(tensors));
  }
}
