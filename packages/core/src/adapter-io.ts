import * as tf from '@tensorflow/tfjs-core';
import { type ModelFiles, SafetensorsError, openFiles, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { type Module, withoutInit } from '@lora/nn';
import { type LoraConfig, loraConfigFromJson, loraConfigToJson } from './lora-config';
import { baseBias } from './lora-layer';

import { PeftModel } from './peft-model';

const PREFIX = 'base_model.model.';

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
  if (!model.peftConfig.has(adapterName)) throw new Error(`adapter '${adapterName}' does not exist; adapters: ${model.adapters.join(', ')}`);
  const out: Record<string, tf.Tensor> = {};
  for (const [path, layer] of model.loraLayers()) {
    if (!layer.settings.has(adapterName)) continue;
    for (const [suffix, t] of Object.entries(layer.savedTensors(adapterName))) out[`${PREFIX}${path}.${suffix}`] = t;
  }
  // modules_to_save: the adapter's copy, under the module's own names
  for (const [path, w] of model.modulesToSaveWrappers()) {
    if (!w.modulesToSave.has(adapterName)) continue;
    for (const [k, t] of w.modulesToSave.get(adapterName).namedParameters()) out[`${PREFIX}${path}.${k}`] = t;
  }
  // biases trained with the adapter travel with it (PEFT's bias 'lora_only' / 'all')
  const bias = (model.peftConfig.get(adapterName) as LoraConfig).bias;
  if (bias === 'lora_only') {
    for (const [path, layer] of model.loraLayers()) {
      const b = baseBias(layer);
      if (layer.settings.has(adapterName) && b) out[`${PREFIX}${path}.base_layer.bias`] = b;
    }
  } else if (bias === 'all') {
    for (const [name, p] of model.model.namedParameters()) if (name.endsWith('.bias') && !name.includes('.lora_')) out[`${PREFIX}${name}`] = p;
  }
  return out;
}

/**
 * One adapter as the two files PEFT writes (`adapter_config.json`, `adapter_model.safetensors`),
 * in memory: what a browser saves or uploads.
 *
 * @example
 * ```ts
 * const { config, weights } = await serializeAdapter(peft);
 * ```
 */
export async function serializeAdapter(model: PeftModel, adapterName = 'default'): Promise<{ config: string; weights: Uint8Array }> {
  const config = model.peftConfig.get(adapterName) as LoraConfig;
  const weights = await serializeSafetensors(adapterStateDict(model, adapterName), { metadata: { format: 'pt' } });
  return { config: loraConfigToJson(config), weights };
}

/**
 * Saves adapters in PEFT's layout: the default adapter in `dir`, others in `dir/<name>/`; each as
 * `adapter_config.json` + `adapter_model.safetensors`, written atomically. Node only.
 *
 * @example
 * ```ts
 * await saveAdapter(peft, 'out/my-adapter');   // then in Python: PeftModel.from_pretrained(base, 'out/my-adapter')
 * ```
 */
export async function saveAdapter(model: PeftModel, dir: string, options: { selectedAdapters?: string[] } = {}): Promise<string[]> {
  const names = options.selectedAdapters ?? model.adapters;
  const unknown = names.filter((n) => !model.peftConfig.has(n));
  if (unknown.length) {
    throw new Error(`You passed an invalid \`selected_adapters\` arguments, current supported adapter names are ${JSON.stringify(model.adapters)} - got ${JSON.stringify(names)}.`);
  }
  const nodeName = '@lora/tensor/node';
  const fsName = 'node:fs/promises';
  const { writeFileAtomic } = (await import(/* @vite-ignore */ nodeName)) as typeof import('@lora/tensor/node');
  const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
  const written: string[] = [];
  for (const name of names) {
    const target = name === 'default' ? dir : `${dir}/${name}`;
    await fs.mkdir(target, { recursive: true });
    const { config, weights } = await serializeAdapter(model, name);
    await writeFileAtomic(`${target}/adapter_model.safetensors`, weights);
    await writeFileAtomic(`${target}/adapter_config.json`, config);
    written.push(target);
  }
  return written;
}

/** What {@link loadAdapter} returns. */
export interface LoadAdapterResult {
  model: PeftModel;
  missingKeys: string[];
  unexpectedKeys: string[];
}

/**
 * Loads a PEFT adapter (a directory in Node, or the files in memory) onto `model`: a plain model is
 * wrapped as a PeftModel, a PeftModel gains the adapter. With `isTrainable: false` (PEFT's default)
 * the adapter is frozen and the model is put in eval mode (as PEFT). Keys the model lacks, or lacks in the file, are reported (an error with
 * `strict`); shapes must match.
 *
 * @example
 * ```ts
 * const { model: peft } = await loadAdapter(base, 'adapters/sql-lora');
 * ```
 */
export async function loadAdapter(model: Module | PeftModel, files: ModelFiles, options: { adapterName?: string; isTrainable?: boolean; strict?: boolean } = {}): Promise<LoadAdapterResult> {
  const name = options.adapterName ?? 'default';
  const source = await openFiles(files);
  if (!(await source.has('adapter_config.json'))) throw new Error(`${source.label}: no adapter_config.json; is this a PEFT adapter directory?`);
  const config: LoraConfig = { ...loraConfigFromJson(JSON.parse(await source.text('adapter_config.json'))), inferenceMode: !(options.isTrainable ?? false) };
  if (!(await source.has('adapter_model.safetensors'))) {
    throw new Error(`${source.label}: no adapter_model.safetensors${(await source.has('adapter_model.bin')) ? ' (adapter_model.bin is a pickle; convert it to safetensors)' : ''}`);
  }
  const { tensors } = parseSafetensors(await source.bytes('adapter_model.safetensors'), { file: `${source.label}/adapter_model.safetensors` });
  try {
    let peft: PeftModel;
    // The file's weights replace the initial ones, so skip random initialisation.
    const initless = { ...config, initLoraWeights: false as const };
    // withoutInit: the layers' constructors would draw random weights only for the file to replace them
    if (model instanceof PeftModel) {
      withoutInit(() => model.addAdapter(name, initless));
      peft = model;
    } else peft = withoutInit(() => new PeftModel(model, initless, name));
    // fan_in_fan_out as corrected while wrapping (PEFT corrects the loaded config in place)
    peft.peftConfig.set(name, { ...config, fanInFanOut: (peft.peftConfig.get(name) as LoraConfig).fanInFanOut });
    const own = adapterStateDict(peft, name);
    const missingKeys = Object.keys(own).filter((k) => !(k in tensors));
    const unexpectedKeys = Object.keys(tensors).filter((k) => !(k in own));
    if ((options.strict ?? false) && (missingKeys.length || unexpectedKeys.length)) {
      throw new Error(`adapter ${source.label}: missing keys ${JSON.stringify(missingKeys)}, unexpected keys ${JSON.stringify(unexpectedKeys)}`);
    }
    for (const [k, target] of Object.entries(own)) {
      const t = tensors[k];
      if (!t) continue;
      if (t.shape.join(',') !== target.shape.join(',')) {
        throw new SafetensorsError({ file: `${source.label}/adapter_model.safetensors`, tensor: k, field: 'shape' }, `shape [${t.shape.join(', ')}] does not fit the model's [${target.shape.join(', ')}]; was the adapter trained on another base model or rank?`);
      }
      tf.tidy(() => (target as tf.Variable).assign(t));
    }
    peft.setAdapter(peft.activeAdapter);
    // as PEFT's load_adapter: an adapter loaded for inference puts the model in eval mode (no dropout)
    if (!(options.isTrainable ?? false)) peft.eval();
    return { model: peft, missingKeys, unexpectedKeys };
  } finally {
    tf.dispose(Object.values(tensors));
  }
}
