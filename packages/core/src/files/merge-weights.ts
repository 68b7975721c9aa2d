import * as tf from '@tensorflow/tfjs-core';
import { SafetensorsError } from '@lora/tensor';
import { allFinite } from '../all-finite';
import { doraRescaled } from '../variants/dora';
import {
  type AdapterTargetKind,
  PEFT_SUFFIX,
  adapterTargets,
  loraFactorKeys,
  peftKey,
  replacedBaseWeights,
  tokenTargets,
} from './peft-keys';
import { type LoraConfig, moduleScaling } from '../lora-config';
import { replaceRows } from '../layers/trainable-tokens';

/** One adapter: its config and its tensors by PEFT's saved names. */
export interface AdapterFiles {
  config: LoraConfig;
  tensors: Record<string, tf.Tensor>;
  /** The weights file they came from, for error messages (default `adapter_model.safetensors`). */
  file?: string;
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
 * Trainable tokens (`P.token_adapter.trainable_tokens_delta`) replace their rows of `P.weight`; the
 * adapter's whole tensors — `modules_to_save` copies, biases trained with `bias: 'all' | 'lora_only'`,
 * saved embedding layers ({@link replacedBaseWeights}) — replace the base's, as PEFT's merged model holds them.
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

/**
 * Checks one module's factors against each other, the config's rank and the base weight before any
 * arithmetic: a file whose lora_A and lora_B disagree must be named, not multiplied into a made-up shape.
 */
function checkFactors(
  adapter: AdapterFiles,
  path: string,
  kind: AdapterTargetKind,
  w: tf.Tensor,
  r: number,
): { a: tf.Tensor; b: tf.Tensor } {
  const file = adapter.file ?? 'adapter_model.safetensors';
  const [aKey, bKey] = loraFactorKeys(path, kind === 'embedding');
  const a = need(adapter.tensors, aKey);
  const b = need(adapter.tensors, bKey);
  const bad = (tensor: string, message: string): never => {
    throw new SafetensorsError({ file, tensor, field: 'shape' }, message);
  };
  const shape = (t: tf.Tensor) => `[${t.shape.join(', ')}]`;
  if (a.rank < 2 || b.rank < 2)
    bad(a.rank < 2 ? aKey : bKey, `a LoRA factor must have at least 2 dimensions; got ${shape(a.rank < 2 ? a : b)}`);
  const rankB = b.shape[1] as number;
  const conv = kind !== 'linear' && kind !== 'embedding';
  // a grouped convolution's lora_B is [out, r/groups, …]: refused further on, as PEFT refuses its merge
  if (conv ? (a.shape[0] as number) % rankB !== 0 : a.shape[0] !== rankB)
    bad(
      bKey,
      `${bKey} ${shape(b)} has rank ${rankB} but ${aKey} ${shape(a)} has rank ${a.shape[0]}; the file is corrupt or mixes two adapters`,
    );
  if (a.shape[0] !== r)
    bad(
      aKey,
      `rank ${a.shape[0]} (shape ${shape(a)}) but the adapter's config gives this module r = ${r} (r, rank_pattern); the config and the weights do not belong together`,
    );
  const out = b.shape[0] as number;
  const inner = a.size / r;
  // a grouped kernel is [out, in/groups, …k] while A reads all `in` channels: refused below, as PEFT does
  const grouped = conv && ((a.shape[1] as number) > (w.shape[1] as number) || a.shape[0] !== rankB);
  // a Linear's shapes are checked (and a fan_in_fan_out [in, out] told apart) by storedTransposed
  if (kind !== 'linear' && !grouped && out * inner !== w.size)
    bad(
      aKey,
      `${aKey} ${shape(a)} and ${bKey} ${shape(b)} give an update of ${out * inner} values, but the base weight '${path}.weight' is [${w.shape.join(', ')}] (${w.size}); was the adapter trained on another base model?`,
    );
  const magnitudeKey = peftKey(path, PEFT_SUFFIX.magnitude);
  const magnitude = adapter.tensors[magnitudeKey];
  if (magnitude && magnitude.size !== out)
    bad(magnitudeKey, `DoRA magnitude ${shape(magnitude)} has ${magnitude.size} values; '${path}' has ${out} outputs`);
  return { a, b };
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
    // modules_to_save copies, trained biases, saved embedding layers: the adapter's tensor replaces the base's
    for (const [name, key] of replacedBaseWeights(tensors)) {
      const w = base[name];
      if (!w) {
        missing.push(name);
        continue;
      }
      const t = tensors[key] as tf.Tensor;
      if (t.shape.join(',') !== w.shape.join(','))
        throw new SafetensorsError(
          { file: adapter.file ?? 'adapter_model.safetensors', tensor: key, field: 'shape' },
          `[${t.shape.join(', ')}] replaces the base's '${name}' [${w.shape.join(', ')}]: was the adapter trained on another base model?`,
        );
      merged[name] = t.dtype === w.dtype ? tf.clone(t) : tf.cast(t, w.dtype);
    }
    for (const [path, kind] of adapterTargets(tensors)) {
      const weightKey = `${path}.weight`;
      // a saved embedding layer that LoRA also wraps (`…embed_tokens.base_layer.weight`) is the base it merges into
      const replaced = merged[weightKey];
      const w = replaced ?? base[weightKey];
      if (!w) {
        missing.push(weightKey);
        continue;
      }
      const { scaling: s, r: configR } = moduleScaling(config, path);
      const { a, b } = checkFactors(adapter, path, kind, w, configR);
      merged[weightKey] = tf.tidy(() => {
        if (kind === 'embedding') {
          const sum = tf.add(w, tf.transpose(tf.mul(tf.matMul(b, a), s)));
          const magnitude = tensors[peftKey(path, PEFT_SUFFIX.magnitude)];
          // DoRA: one magnitude per embedding dimension, the norm over the vocabulary
          return magnitude ? doraRescaled(sum, magnitude, 1) : sum;
        }
        // convolutions: ΔW = reshape(B[out, r] · A[r, in·∏k]) in the kernel's shape
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
        const magnitude = tensors[peftKey(path, PEFT_SUFFIX.magnitude)];
        if (!magnitude) return sum;
        // DoRA: one magnitude per output unit: a row of [out, in], a column of a fan_in_fan_out [in, out],
        // an output channel of a kernel (the norm over the rest of it)
        return doraRescaled(sum, magnitude, fifo ? 1 : 0);
      });
      replaced?.dispose();
      const loraBias = tensors[peftKey(path, PEFT_SUFFIX.loraBBias)];
      if (loraBias) {
        // on the bias as trained, when the adapter carries one (bias 'all' / 'lora_only')
        const b = merged[`${path}.bias`] ?? base[`${path}.bias`];
        if (!b) throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
        merged[`${path}.bias`] = tf.tidy(() => tf.add(b, tf.mul(loraBias, s)));
        if (b !== base[`${path}.bias`]) b.dispose();
      }
    }
    // trainable tokens: the adapter's rows replace the base rows (PEFT's TrainableTokensLayer.merge)
    for (const path of tokenTargets(tensors)) {
      const rows = tensors[peftKey(path, PEFT_SUFFIX.tokens)] as tf.Tensor;
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
