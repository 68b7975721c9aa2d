import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, loraScaling } from './lora-config';
import { patternKey } from './peft-model';
import { replaceRows } from './trainable-tokens';

const PREFIX = 'base_model.model.';

/** One adapter: its config and its tensors by PEFT's saved names. */
export interface AdapterFiles {
  config: LoraConfig;
  tensors: Record<string, tf.Tensor>;
}

/** The LoRA-wrapped module paths an adapter file holds, with the kind of layer each is. */
export function adapterTargets(tensors: Record<string, tf.Tensor>): Map<string, 'linear' | 'embedding'> {
  const out = new Map<string, 'linear' | 'embedding'>();
  for (const key of Object.keys(tensors)) {
    const m = /^base_model\.model\.(.+)\.(lora_A\.weight|lora_embedding_A)$/.exec(key);
    if (m) out.set(m[1] as string, m[2] === 'lora_embedding_A' ? 'embedding' : 'linear');
  }
  return out;
}

/** The rows an adapter's trainable tokens at `path` replace: the list, or the entry of the record naming the path. */
function tokenIndicesFor(config: LoraConfig, path: string): number[] {
  const tti = config.trainableTokenIndices;
  if (Array.isArray(tti)) return tti;
  const key = tti ? Object.keys(tti).find((k) => path.endsWith(k)) : undefined;
  if (!tti || key === undefined) throw new Error(`the adapter has trainable tokens for '${path}' but its trainable_token_indices (${JSON.stringify(tti)}) name no such module`);
  return tti[key] as number[];
}

function need(tensors: Record<string, tf.Tensor>, key: string): tf.Tensor {
  const t = tensors[key];
  if (!t) throw new Error(`the adapter has no '${key}'; it is incomplete`);
  return t;
}

/**
 * Merges one adapter into base weights without building a model (what `lora merge` does, shard by
 * shard): for every wrapped module P, `P.weight ← P.weight + s·B·A` (Linear; DoRA rescales each row
 * to the magnitude), `P.weight ← P.weight + s·(B·A)ᵀ` (Embedding), and with `lora_bias`
 * `P.bias ← P.bias + s·b`. Scalings follow the config (α/r or α/√r, rank and alpha patterns).
 * Trainable tokens (`P.token_adapter.trainable_tokens_delta`) replace their rows of `P.weight`.
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
          return tf.add(w, tf.transpose(tf.mul(tf.matMul(need(tensors, `${p}.lora_embedding_B`), need(tensors, `${p}.lora_embedding_A`)), s)));
        }
        // convolutions: ΔW = reshape(B[out, r] · A[r, in·∏k]) in the kernel's shape
        const a = need(tensors, `${p}.lora_A.weight`);
        const b = need(tensors, `${p}.lora_B.weight`);
        const r = a.shape[0] as number;
        const delta = tf.reshape(tf.mul(tf.matMul(tf.reshape(b, [-1, r]), tf.reshape(a, [r, -1])), s), w.shape);
        const sum = tf.add(w, delta);
        const magnitude = tensors[`${p}.lora_magnitude_vector`];
        if (!magnitude) return sum;
        if (w.rank !== 2) throw new Error(`DoRA on '${path}' (a ${w.rank}-d weight) cannot be merged by name yet`);
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
    // trainable tokens: the adapter's rows replace the base rows (PEFT's TrainableTokensLayer.merge)
    for (const [key, rows] of Object.entries(tensors)) {
      const path = /^base_model\.model\.(.+)\.token_adapter\.trainable_tokens_delta$/.exec(key)?.[1];
      if (path === undefined) continue;
      const weightKey = `${path}.weight`;
      const w = merged[weightKey] ?? base[weightKey];
      if (!w) {
        missing.push(weightKey);
        continue;
      }
      const next = replaceRows(w, tokenIndicesFor(config, path), rows);
      merged[weightKey]?.dispose();
      merged[weightKey] = next;
      if (options.safeMerge && !tf.tidy(() => tf.all(tf.isFinite(next)).dataSync()[0])) throw new Error(`NaNs detected in the merged weights. The adapter seems to be broken (${weightKey})`);
    }
  } catch (e) {
    tf.dispose(Object.values(merged));
    throw e;
  }
  return { merged, missing };
}
