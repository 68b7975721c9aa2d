import * as tf from '@tensorflow/tfjs-core';
import { normExcept } from './dora';
import { type LoraConfig, loraScaling } from './lora-config';
import { patternKey } from './peft-model';

const PREFIX = 'base_model.model.';

/** One adapter: its config and its tensors by PEFT's saved names. */
export interface AdapterFiles {
  config: LoraConfig;
  tensors: Record<string, tf.Tensor>;
}

/** The kind of layer an adapter wraps, as its tensors tell: convolutions by their kernel's rank. */
export type AdapterTargetKind = 'linear' | 'embedding' | 'conv1d' | 'conv2d' | 'conv3d';

/**
 * The LoRA-wrapped module paths an adapter file holds, with the kind of layer each is (`lora_A` of
 * rank 2: Linear; 3, 4, 5: Conv1d, Conv2d, Conv3d; `lora_embedding_A`: Embedding).
 *
 * @example
 * ```ts
 * adapterTargets(tensors); // Map { 'embed' => 'embedding', 'conv' => 'conv2d', 'lin' => 'linear' }
 * ```
 */
export function adapterTargets(tensors: Record<string, tf.Tensor>): Map<string, AdapterTargetKind> {
  const out = new Map<string, AdapterTargetKind>();
  const convs: Record<number, AdapterTargetKind> = { 3: 'conv1d', 4: 'conv2d', 5: 'conv3d' };
  for (const [key, t] of Object.entries(tensors)) {
    const m = /^base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)$/.exec(key);
    if (m) out.set(m[1] as string, m[2] === 'lora_embedding_A' ? 'embedding' : (convs[t.rank] ?? 'linear'));
  }
  return out;
}

/** DoRA's merged weight (m / ‖W + ΔW‖) ⊙ (W + ΔW), the norm over every axis but `keep` of `sum` = W + ΔW. */
function doraRescaled(sum: tf.Tensor, magnitude: tf.Tensor, keep: number): tf.Tensor {
  const norm = normExcept(sum, keep);
  return tf.mul(sum, tf.div(tf.reshape(magnitude, norm.shape), norm));
}

function need(tensors: Record<string, tf.Tensor>, key: string): tf.Tensor {
  const t = tensors[key];
  if (!t) throw new Error(`the adapter has no '${key}'; it is incomplete`);
  return t;
}

/**
 * Merges one adapter into base weights without building a model (what `lora merge` does, shard by
 * shard): for every wrapped module P, `P.weight ← P.weight + s·B·A` (Linear; DoRA rescales each row
 * to the magnitude), `P.weight ← P.weight + s·(B·A)ᵀ` (Embedding; DoRA rescales each dimension),
 * `P.weight ← P.weight + s·reshape(B·A)` (convolutions; DoRA rescales each output channel; grouped
 * convolutions cannot be merged, as PEFT), and with `lora_bias`
 * `P.bias ← P.bias + s·b`. Scalings follow the config (α/r or α/√r, rank and alpha patterns).
 * Returns new tensors for the keys of `base` it changed (the caller owns them); modules the adapter
 * has but `base` lacks are listed in `missing` (they may live in another shard).
 *
 * @example
 * ```ts
 * const { merged } = mergeAdapterWeights(shardTensors, { config, tensors: adapterTensors });
 * ```
 */
export function mergeAdapterWeights(base: Record<string, tf.Tensor>, adapter: AdapterFiles, options: { safeMerge?: boolean } = {}): { merged: Record<string, tf.Tensor>; missing: string[] } {
  const { config, tensors } = adapter;
  if (config.fanInFanOut) throw new Error('fan_in_fan_out adapters cannot be merged by name yet');
  const merged: Record<string, tf.Tensor> = {};
  const missing: string[] = [];
  const rankKeys = Object.keys(config.rankPattern);
  const alphaKeys = Object.keys(config.alphaPattern);
  try {
    for (const [path, kind] of adapterTargets(tensors)) {
      const weightKey = `${path}.weight`;
      const w = base[weightKey];
      if (!w) {
        missing.push(weightKey);
        continue;
      }
      const rKey = patternKey(rankKeys, path);
      const aKey = patternKey(alphaKeys, path);
      const r = rKey === undefined ? config.r : (config.rankPattern[rKey] as number);
      const alpha = aKey === undefined ? config.loraAlpha : (config.alphaPattern[aKey] as number);
      const s = loraScaling(alpha, r, config.useRslora);
      const p = `${PREFIX}${path}`;
      merged[weightKey] = tf.tidy(() => {
        if (kind === 'embedding') {
          const sum = tf.add(w, tf.transpose(tf.mul(tf.matMul(need(tensors, `${p}.lora_embedding_B`), need(tensors, `${p}.lora_embedding_A`)), s)));
          const magnitude = tensors[`${p}.lora_magnitude_vector`];
          // DoRA: one magnitude per embedding dimension, the norm over the vocabulary
          return magnitude ? doraRescaled(sum, magnitude, 1) : sum;
        }
        // convolutions: ΔW = reshape(B[out, r] · A[r, in·∏k]) in the kernel's shape
        const a = need(tensors, `${p}.lora_A.weight`);
        const b = need(tensors, `${p}.lora_B.weight`);
        const r = a.shape[0] as number;
        // a grouped kernel is [out, in/groups, …k] while A reads all `in` channels
        const groups = (a.shape[1] as number) / (w.shape[1] as number);
        if (kind !== 'linear' && Number.isInteger(groups) && groups > 1) throw new Error(`'${path}' is a grouped convolution (groups=${groups}): Merging is not supported for _ConvNd layers with groups > 1!`);
        const delta = tf.reshape(tf.mul(tf.matMul(tf.reshape(b, [-1, r]), tf.reshape(a, [r, -1])), s), w.shape);
        const sum = tf.add(w, delta);
        const magnitude = tensors[`${p}.lora_magnitude_vector`];
        if (!magnitude) return sum;
        // DoRA on a convolution: one magnitude per output channel, the norm over the rest of the kernel
        if (kind !== 'linear') return doraRescaled(sum, magnitude, 0);
        const norm = tf.sqrt(tf.sum(tf.square(sum), 1));
        return tf.mul(sum, tf.expandDims(tf.div(magnitude, norm), 1));
      });
      const loraBias = tensors[`${p}.lora_B.bias`];
      if (loraBias) {
        const b = base[`${path}.bias`];
        if (!b) throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
        merged[`${path}.bias`] = tf.tidy(() => tf.add(b, tf.mul(loraBias, s)));
      }
      if (options.safeMerge) {
        for (const k of [weightKey, `${path}.bias`]) {
          const t = merged[k];
          if (t && !tf.tidy(() => tf.all(tf.isFinite(t)).dataSync()[0])) throw new Error(`NaNs detected in the merged weights. The adapter seems to be broken (${k})`);
        }
      }
    }
  } catch (e) {
    tf.dispose(Object.values(merged));
    throw e;
  }
  return { merged, missing };
}
