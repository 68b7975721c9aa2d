import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { matrix64, svd } from '@lora/linalg';
import type { LoraConfig } from './lora-config';
import { LoraEmbedding } from './lora-embedding';
import type { LoraLayer, PeftModel } from './peft-model';

/** Combination types of PEFT's `add_weighted_adapter`. */
export type CombinationType =
  | 'svd' | 'linear' | 'cat' | 'ties' | 'ties_svd' | 'dare_linear' | 'dare_ties' | 'dare_linear_svd' | 'dare_ties_svd' | 'magnitude_prune' | 'magnitude_prune_svd';

/** Options of {@link addWeightedAdapter}, with PEFT's defaults. */
export interface WeightedAdapterOptions {
  combinationType?: CombinationType;
  svdRank?: number;
  /** Clamp the SVD factors to this quantile of their values. */
  svdClamp?: number;
  density?: number;
  majoritySignMethod?: 'total' | 'frequency';
  /** Seed of DARE's random pruning (PyTorch's masks cannot be reproduced). Default 0. */
  seed?: number;
}

function rankOf(c: LoraConfig): number {
  const extra = Object.values(c.rankPattern);
  return extra.length ? Math.max(c.r, ...extra) : c.r;
}

/** Keeps the `floor(density·n)` largest magnitudes of t (PEFT's magnitude prune). */
function magnitudePrune(t: tf.Tensor, density: number): tf.Tensor {
  if (density >= 1) return tf.clone(t);
  if (density < 0) throw new Error(`Density should be >= 0, got ${density}`);
  return tf.tidy(() => {
    const k = Math.floor(density * t.size);
    if (k === 0) return tf.zerosLike(t);
    const flat = tf.abs(tf.reshape(t, [-1]));
    const { indices } = tf.topk(flat, k);
    const mask = tf.scatterND(tf.expandDims(indices, 1), tf.ones([k]), [t.size]);
    return tf.mul(t, tf.reshape(mask, t.shape));
  });
}

/** Random prune with rescale (PEFT's `prune(t, d, 'random', rescale=True)`), seeded. */
function randomPrune(t: tf.Tensor, density: number, g: Generator): tf.Tensor {
  const u = g.fillUniform(new Float32Array(t.size));
  return tf.tidy(() => tf.div(tf.mul(t, tf.tensor(u.map((v) => (v < density ? 1 : 0)), t.shape)), density));
}

/** PEFT's merge functions over stacked task tensors with per-task weights. */
function combine(tensors: tf.Tensor[], weights: number[], kind: string, o: WeightedAdapterOptions, g: Generator): tf.Tensor {
  const density = o.density;
  const needsDensity = kind !== 'svd' && kind !== 'linear';
  if (needsDensity && density === undefined) throw new Error(`combination type ${kind} needs a density`);
  return tf.tidy(() => {
    let ts = tensors;
    if (kind.startsWith('magnitude_prune') || kind === 'ties' || kind === 'ties_svd') ts = ts.map((t) => magnitudePrune(t, density as number));
    if (kind.startsWith('dare')) ts = ts.map((t) => randomPrune(t, density as number, g));
    const weighted = ts.map((t, i) => tf.mul(t, weights[i] as number));
    if (!(kind.includes('ties'))) return tf.addN(weighted);
    // TIES: elect a sign per entry on the unweighted (pruned) tensors; average the agreeing entries
    const stacked = tf.stack(ts);
    const signs = tf.sign(stacked);
    const majority = o.majoritySignMethod === 'frequency' ? tf.sum(signs, 0) : tf.sum(stacked, 0);
    const elected = tf.where(tf.greaterEqual(majority, 0), tf.onesLike(majority), tf.neg(tf.onesLike(majority)));
    const agree = tf.cast(tf.equal(signs, elected), 'float32');
    const num = tf.sum(tf.mul(tf.stack(weighted), agree), 0);
    return tf.div(num, tf.maximum(tf.sum(agree, 0), 1));
  });
}

/** torch.quantile with linear interpolation, over all values. */
function quantile(values: Float64Array, q: number): number {
  const s = Float64Array.from(values).sort();
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return (s[lo] as number) + ((s[hi] as number) - (s[lo] as number)) * (pos - lo);
}

/**
 * Adds an adapter that combines existing ones (PEFT's `add_weighted_adapter`), with PEFT's math and
 * quirks: the new config copies the first adapter's with r = α = the new rank (so scaling is 1, or
 * √rank with rsLoRA); `linear`-family types weight A by sign(c)·√|c| and B by √|c| (c = w·s); `cat`
 * stacks w·s·A and B; the `*svd` types decompose the w-weighted combination of the ΔW (which hold
 * their s) and keep the top singular triplets.
 *
 * @example
 * ```ts
 * await addWeightedAdapter(peft, ['a', 'b'], [0.7, 0.3], 'mix', { combinationType: 'svd', svdRank: 8 });
 * peft.setAdapter('mix');
 * ```
 */
export async function addWeightedAdapter(model: PeftModel, adapters: string[], weights: number[], name: string, options: WeightedAdapterOptions = {}): Promise<void> {
  if (model.peftConfig.has(name)) return; // PEFT returns silently
  for (const a of adapters) if (!model.peftConfig.has(a)) throw new Error(`Adapter ${a} does not exist`);
  if (weights.length !== adapters.length) throw new Error(`${adapters.length} adapters but ${weights.length} weights were given`);
  let kind: CombinationType = adapters.length === 1 ? 'linear' : (options.combinationType ?? 'svd');
  const configs = adapters.map((a) => model.peftConfig.get(a) as LoraConfig);
  const ranks = configs.map(rankOf);
  let newRank: number;
  if (['linear', 'ties', 'dare_ties', 'dare_linear', 'magnitude_prune'].includes(kind)) {
    if (new Set(ranks).size !== 1) throw new Error('All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear.');
    newRank = ranks[0] as number;
  } else if (kind === 'cat') newRank = ranks.reduce((a, b) => a + b, 0);
  else if (kind.endsWith('svd')) newRank = options.svdRank ?? Math.max(...ranks);
  else throw new Error(`Invalid combination_type: ${kind}`);
  kind = kind as CombinationType;
  const targets = configs.map((c) => c.targetModules);
  let targetModules: LoraConfig['targetModules'];
  if (targets.every((t) => typeof t === 'string')) targetModules = targets.map((t) => `(${t})`).join('|');
  else if (targets.every((t) => Array.isArray(t))) targetModules = [...new Set(targets.flat() as string[])];
  else throw new Error('all adapter configs should follow the same target modules type. Combining adapters with `target_modules` type being a mix of list/set and string is not supported.');
  const base = configs[0] as LoraConfig;
  model.addAdapter(name, { ...base, r: newRank, loraAlpha: newRank, rankPattern: {}, alphaPattern: {}, targetModules, initLoraWeights: false, useDora: false });
  const g = new Generator(options.seed ?? 0);
  for (const [, layer] of model.loraLayers()) {
    if (!layer.settings.has(name)) continue;
    const present = adapters.map((a, i) => [a, weights[i] as number] as const).filter(([a]) => layer.settings.has(a));
    if (layer.factorA(name).rank !== 2) throw new Error('addWeightedAdapter on convolution layers is not implemented in @lora/core yet');
    const A = layer.factorA(name);
    const B = layer.factorB(name);
    if (present.length === 0) {
      tf.tidy(() => {
        A.assign(tf.zerosLike(A));
        B.assign(tf.zerosLike(B));
      });
      continue;
    }
    if (kind === 'cat') {
      tf.tidy(() => {
        const as = present.map(([a, w]) => tf.mul(layer.factorA(a), w * (layer.scaling.get(a) as number)));
        const bs = present.map(([a]) => layer.factorB(a));
        const used = as.reduce((s, t) => s + (t.shape[0] as number), 0);
        A.assign(tf.concat([...as, tf.zeros([newRank - used, A.shape[1] as number])], 0));
        B.assign(tf.concat([...bs, tf.zeros([B.shape[0] as number, newRank - used])], 1));
      });
    } else if (!kind.endsWith('svd')) {
      const c = present.map(([a, w]) => w * (layer.scaling.get(a) as number));
      const newA = combine(present.map(([a]) => layer.factorA(a)), c.map((v) => Math.sign(v) * Math.sqrt(Math.abs(v))), kind, options, g);
      const newB = combine(present.map(([a]) => layer.factorB(a)), c.map((v) => Math.sqrt(Math.abs(v))), kind, options, g);
      A.assign(newA);
      B.assign(newB);
      tf.dispose([newA, newB]);
    } else {
      const deltas = present.map(([a]) => layer.getDeltaWeight(a));
      const mergeKind = kind === 'svd' ? 'linear' : kind.replace(/_svd$/, '');
      // PEFT 0.21 weights the deltas by w alone: get_delta_weight already holds each adapter's scaling
      const delta = combine(deltas, present.map(([, w]) => w), mergeKind === 'linear' ? 'svd' : mergeKind, options, g);
      tf.dispose(deltas);
      await setFromSvd(layer, name, delta, newRank, options.svdClamp);
      delta.dispose();
    }
  }
}

async function setFromSvd(layer: LoraLayer, name: string, delta: tf.Tensor, rank: number, clamp: number | undefined): Promise<void> {
  // PEFT decomposes (out, in): embeddings' deltas are [vocab, dim] and fan-in-fan-out ones [in, out]
  const transposed = layer instanceof LoraEmbedding || (layer.settings.get(name)?.fanInFanOut ?? false);
  const [m, n] = delta.shape as [number, number];
  const values = Float64Array.from((await delta.data()) as Float32Array);
  let d = matrix64(m, n, values);
  if (transposed) d = matrix64(n, m, Float64Array.from({ length: m * n }, (_, i) => values[(i % m) * n + Math.floor(i / m)] as number));
  const k = Math.min(rank, d.rows, d.cols);
  const { U, S, Vh } = svd(d, { fullMatrices: rank > Math.min(d.rows, d.cols) });
  // U[:, :rank]·diag(S[:rank]) and Vh[:rank], zero-padded when the delta has fewer singular values than the rank
  const u = new Float64Array(d.rows * rank);
  const v = new Float64Array(rank * d.cols);
  for (let i = 0; i < d.rows; i++) for (let j = 0; j < k; j++) u[i * rank + j] = (U.data[i * U.cols + j] as number) * (S[j] ?? 0);
  for (let j = 0; j < k; j++) for (let c = 0; c < d.cols; c++) v[j * d.cols + c] = Vh.data[j * Vh.cols + c] as number;
  if (clamp !== undefined) {
    const hi = quantile(Float64Array.from([...u, ...v]), clamp);
    for (const arr of [u, v]) for (let i = 0; i < arr.length; i++) arr[i] = Math.min(hi, Math.max(-hi, arr[i] as number));
  }
  tf.tidy(() => {
    layer.factorB(name).assign(tf.tensor2d(Float32Array.from(u), [d.rows, rank]));
    layer.factorA(name).assign(tf.tensor2d(Float32Array.from(v), [rank, d.cols]));
  });
}
