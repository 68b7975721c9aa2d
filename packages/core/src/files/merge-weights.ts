import * as tf from '@tensorflow/tfjs-core';
import { allFinite } from '../all-finite';
import { normExcept } from '../variants/dora';
import { type LoraConfig, moduleScaling } from '../lora-config';
import { replaceRows } from '../layers/trainable-tokens';

/** How PEFT's saved adapter files name the user's model: `base_model.model.<path>…`. */
export const PREFIX = 'base_model.model.';

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

/** The module paths an adapter file holds trainable-token rows for (`<path>.token_adapter.trainable_tokens_delta`). */
export function tokenTargets(tensors: Record<string, unknown>): string[] {
  return Object.keys(tensors).flatMap(
    (k) => /^base_model\.model\.(.+)\.token_adapter\.trainable_tokens_delta$/.exec(k)?.[1] ?? [],
  );
}

/**
 * Every module path whose weight merging an adapter changes: its LoRA targets and its trainable-token layers.
 *
 * @example
 * ```ts
 * mergedModulePaths(adapter.tensors); // ['model.layers.0.self_attn.q_proj', …, 'model.embed_tokens']
 * ```
 */
export function mergedModulePaths(tensors: Record<string, tf.Tensor>): string[] {
  return [...new Set([...adapterTargets(tensors).keys(), ...tokenTargets(tensors)])];
}

/** DoRA's merged weight (m / ‖W + ΔW‖) ⊙ (W + ΔW), the norm over every axis but `keep` of `sum` = W + ΔW. */
function doraRescaled(sum: tf.Tensor, magnitude: tf.Tensor, keep: number): tf.Tensor {
  const norm = normExcept(sum, keep);
  return tf.mul(sum, tf.div(tf.reshape(magnitude, norm.shape), norm));
}

/**
 * Whether a 2-d base weight is stored [in, out] (transformers' Conv1D, PEFT's fan_in_fan_out) for a
 * ΔW of shape [out, in]. The shapes tell unless the weight is square; then `fanInFanOut` does (PEFT
 * decides by the module's class, which weight files do not record).
 */
function storedTransposed(
  path: string,
  weight: [number, number],
  delta: [number, number],
  fanInFanOut: boolean,
): boolean {
  const [out, inF] = delta;
  if (weight[0] === out && weight[1] === inF) return out === inF ? fanInFanOut : false;
  if (weight[0] === inF && weight[1] === out) return true;
  throw new Error(
    `the adapter's update for '${path}' is [${out}, ${inF}] (out, in) but the weight is [${weight.join(', ')}]; was the adapter trained on another base model?`,
  );
}

/** The rows an adapter's trainable tokens at `path` replace: the list, or the entry of the record naming the path. */
function tokenIndicesFor(config: LoraConfig, path: string): number[] {
  const tti = config.trainableTokenIndices;
  if (Array.isArray(tti)) return tti;
  const key = tti ? Object.keys(tti).find((k) => path.endsWith(k)) : undefined;
  if (!tti || key === undefined)
    throw new Error(
      `the adapter has trainable tokens for '${path}' but its trainable_token_indices (${JSON.stringify(tti)}) name no such module`,
    );
  return tti[key] as number[];
}

function need(tensors: Record<string, tf.Tensor>, key: string): tf.Tensor {
  const t = tensors[key];
  if (!t) throw new Error(`the adapter has no '${key}'; it is incomplete`);
  return t;
}

/** Options of {@link mergeAdapterWeights}. */
export interface MergeWeightsOptions {
  /**
   * Check the merged weights for NaN/Inf; the function then returns a Promise (the check reads the
   * backend, asynchronously on every backend). `true` is PEFT's `safe_merge`: a non-finite weight is an
   * error and nothing is returned. `'warn'`: each non-finite weight is named through `warn` and kept.
   * Default false, as PEFT: no check, and the call stays synchronous (`lora merge` checks by default).
   */
  safeMerge?: boolean | 'warn';
  /** Where `safeMerge: 'warn'` reports (default console.warn). */
  warn?: (message: string) => void;
  /** Whether a square 2-d weight at `path` is stored [in, out] (fan_in_fan_out); default: the config's `fan_in_fan_out`. */
  fanInFanOut?: (path: string) => boolean;
}

/** What {@link mergeAdapterWeights} returns: the changed tensors (the caller owns them) and the weights `base` lacked. */
export interface MergedWeights {
  merged: Record<string, tf.Tensor>;
  missing: string[];
}

/**
 * Merges one adapter into base weights without building a model (what `lora merge` does, shard by
 * shard): for every wrapped module P, `P.weight ← P.weight + s·B·A` (Linear; DoRA rescales each row
 * to the magnitude), `P.weight ← P.weight + s·(B·A)ᵀ` (Embedding, DoRA rescaling each dimension; and
 * fan_in_fan_out layers such as transformers' Conv1D, whose weight is [in, out]: told by the shapes, for a
 * square weight by `options.fanInFanOut(path)`, by default the config's `fan_in_fan_out`, which PEFT saves
 * as it was after the last layer it wrapped; DoRA rescales each column), `P.weight ← P.weight +
 * s·reshape(B·A)` (convolutions; DoRA rescales each output channel; grouped convolutions cannot be
 * merged, as PEFT), and with `lora_bias`
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
export function mergeAdapterWeights(
  base: Record<string, tf.Tensor>,
  adapter: AdapterFiles,
  options?: MergeWeightsOptions & { safeMerge?: false },
): MergedWeights;
export function mergeAdapterWeights(
  base: Record<string, tf.Tensor>,
  adapter: AdapterFiles,
  options: MergeWeightsOptions & { safeMerge: true | 'warn' },
): Promise<MergedWeights>;
export function mergeAdapterWeights(
  base: Record<string, tf.Tensor>,
  adapter: AdapterFiles,
  options: MergeWeightsOptions,
): MergedWeights | Promise<MergedWeights>;
export function mergeAdapterWeights(
  base: Record<string, tf.Tensor>,
  adapter: AdapterFiles,
  options: MergeWeightsOptions = {},
): MergedWeights | Promise<MergedWeights> {
  const result = mergeByName(base, adapter, options);
  if (!options.safeMerge) return result;
  return (async () => {
    // PEFT's safe_merge: refuse weights that came out NaN or infinite (read from the backend, hence async)
    for (const [k, t] of Object.entries(result.merged)) {
      if (await allFinite([t])) continue;
      if (options.safeMerge === 'warn') {
        (options.warn ?? console.warn)(
          `${k} has NaN or infinite values after merging: the adapter seems to be broken (kept, as safeMerge is 'warn')`,
        );
        continue;
      }
      tf.dispose(Object.values(result.merged));
      throw new Error(`NaNs detected in the merged weights. The adapter seems to be broken (${k})`);
    }
    return result;
  })();
}

function mergeByName(
  base: Record<string, tf.Tensor>,
  adapter: AdapterFiles,
  options: MergeWeightsOptions,
): MergedWeights {
  const { config, tensors } = adapter;
  const merged: Record<string, tf.Tensor> = {};
  const missing: string[] = [];
  try {
    for (const [path, kind] of adapterTargets(tensors)) {
      const weightKey = `${path}.weight`;
      const w = base[weightKey];
      if (!w) {
        missing.push(weightKey);
        continue;
      }
      const s = moduleScaling(config, path).scaling;
      const p = `${PREFIX}${path}`;
      merged[weightKey] = tf.tidy(() => {
        if (kind === 'embedding') {
          const sum = tf.add(
            w,
            tf.transpose(
              tf.mul(tf.matMul(need(tensors, `${p}.lora_embedding_B`), need(tensors, `${p}.lora_embedding_A`)), s),
            ),
          );
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
        if (kind !== 'linear' && Number.isInteger(groups) && groups > 1)
          throw new Error(
            `'${path}' is a grouped convolution (groups=${groups}): Merging is not supported for _ConvNd layers with groups > 1!`,
          );
        const ba = tf.mul(tf.matMul(tf.reshape(b, [-1, r]), tf.reshape(a, [r, -1])), s);
        const fifo =
          kind === 'linear' &&
          storedTransposed(
            path,
            w.shape as [number, number],
            ba.shape as [number, number],
            options.fanInFanOut?.(path) ?? config.fanInFanOut,
          );
        const delta = fifo ? tf.transpose(ba) : tf.reshape(ba, w.shape);
        const sum = tf.add(w, delta);
        const magnitude = tensors[`${p}.lora_magnitude_vector`];
        if (!magnitude) return sum;
        // DoRA: one magnitude per output unit: a row of [out, in], a column of a fan_in_fan_out [in, out],
        // an output channel of a kernel (the norm over the rest of it)
        return doraRescaled(sum, magnitude, fifo ? 1 : 0);
      });
      const loraBias = tensors[`${p}.lora_B.bias`];
      if (loraBias) {
        const b = base[`${path}.bias`];
        if (!b) throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
        merged[`${path}.bias`] = tf.tidy(() => tf.add(b, tf.mul(loraBias, s)));
      }
    }
    // trainable tokens: the adapter's rows replace the base rows (PEFT's TrainableTokensLayer.merge)
    for (const path of tokenTargets(tensors)) {
      const rows = tensors[`${PREFIX}${path}.token_adapter.trainable_tokens_delta`] as tf.Tensor;
      const weightKey = `${path}.weight`;
      const w = merged[weightKey] ?? base[weightKey];
      if (!w) {
        missing.push(weightKey);
        continue;
      }
      const next = replaceRows(w, tokenIndicesFor(config, path), rows);
      merged[weightKey]?.dispose();
      merged[weightKey] = next;
    }
  } catch (e) {
    tf.dispose(Object.values(merged));
    throw e;
  }
  return { merged, missing };
}
