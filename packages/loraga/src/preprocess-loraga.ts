import * as tf from '@tensorflow/tfjs-core';
import type { LoraConfig, LoraConfigFields } from '@lora/core';
import { LoraConfigError } from '@lora/core';
import type { Module } from '@lora/nn';
import {
  type EstimateGradientsOptions,
  type LoraGaTrainStep,
  accumulateGradients,
  asLoraConfig,
} from './estimate-gradients';
import { cacheExists, checkCacheWritable, readGradientCache, writeGradientCache } from './gradient-cache';
import { type StoredGradient, attachGradient, disposeStored } from './gradient-store';
import { loraGaTargets } from './targets';

/** Options of {@link preprocessLoraga}. */
export interface PreprocessLoragaOptions extends EstimateGradientsOptions {
  /**
   * A safetensors file for the gradients (Node): read when it exists and is not empty (then
   * `trainStep` does not run), else written after the estimation, atomically, its folder created. Its
   * metadata records the targets, their shapes and a fingerprint of every parameter of the model; a
   * cache that does not match the model is refused with a {@link LoraGaCacheError}. A bare file name
   * is a file in the current directory.
   */
  cacheFile?: string;
}

/**
 * Prepares `model` for `initLoraWeights: 'lora_ga'` (PEFT 0.21's `preprocess_loraga`): estimates the
 * mean gradient of every target Linear / TransposedLinear weight over the batches `trainStep` runs
 * (see {@link estimateGradients}), or reads them from `cacheFile`, and attaches them to their layers.
 * Then `getPeftModel(model, config)` initialises each targeted layer from its gradient's SVD and takes
 * s·B·A out of its base weight (await `peft.initialized()` before using the model: the SVDs run
 * asynchronously, one layer at a time). Layers without a gradient, and Embedding and convolution
 * targets, get the default init, as in PEFT.
 *
 * Errors, as PEFT's: no `loraGaConfig`; a quantized target; no supported layer among the targets.
 * With `offload: true` the gradients wait in host memory until their layer is initialised.
 *
 * @example
 * ```ts
 * import { getPeftModel, loraConfig } from '@lora/core';
 * import { preprocessLoraga } from '@lora/loraga';
 *
 * const config = loraConfig({ r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'], initLoraWeights: 'lora_ga', loraGaConfig: {} });
 * await preprocessLoraga(model, config, async (backward) => {
 *   for (const b of batches) await backward(() => model.forward(b, { labels: b }).loss);
 * }, { cacheFile: 'loraga-grads.safetensors' });
 * const peft = getPeftModel(model, config);
 * await peft.initialized();
 * ```
 */
export async function preprocessLoraga(
  model: Module,
  config: LoraConfig | LoraConfigFields,
  trainStep: LoraGaTrainStep,
  options: PreprocessLoragaOptions = {},
): Promise<void> {
  const full = asLoraConfig(config);
  if (full.loraGaConfig === null)
    throw new LoraConfigError(
      "If you want to use LoRA-GA, please initialize the LoraConfig with init_lora_weights='lora_ga' and lora_ga_config=LoraGAConfig(...).",
      { field: 'loraGaConfig' },
    );
  if (full.initLoraWeights !== 'lora_ga')
    (options.warn ?? console.warn)(
      `preprocessLoraga: initLoraWeights is ${JSON.stringify(full.initLoraWeights)}, not 'lora_ga': getPeftModel with this config will not use the gradients`,
    );
  const targets = loraGaTargets(model, full);
  const file = options.cacheFile;
  let gradients: Map<string, StoredGradient>;
  if (file !== undefined && (await cacheExists(file))) {
    gradients = (await readGradientCache(file, model, targets)).gradients;
  } else {
    if (file !== undefined) await checkCacheWritable(file);
    const acc = await accumulateGradients(model, full, trainStep, options);
    gradients = acc.gradients;
    if (file !== undefined) {
      try {
        await writeGradientCache(file, model, acc.targets, gradients, acc.counts, acc.passes);
      } catch (e) {
        for (const g of gradients.values()) disposeStored(g);
        throw e;
      }
    }
  }
  const offload = options.offload ?? false;
  for (const t of targets) {
    const g = gradients.get(t.path);
    if (!g) continue;
    // a cache is read into host memory: kept there when offloading, put on the backend otherwise
    attachGradient(t.module, !offload && g.values ? { shape: g.shape, tensor: tensorOf(g) } : g);
  }
}

function tensorOf(g: StoredGradient): tf.Tensor2D {
  return g.tensor ?? tf.tensor2d(g.values as Float32Array, g.shape);
}
