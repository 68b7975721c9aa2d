/**
 * The math of PEFT's `add_weighted_adapter`, shared by {@link addWeightedAdapter} (adapters on a
 * model) and {@link combineAdapters} (adapters as files): choosing the new rank and config, and
 * combining one module's factors.
 *
 * Everything happens in factor space: A is `[r, in, …kernel]` (Embedding: `[r, vocab]`), B is
 * `[out, r, 1…]` (Embedding: `[dim, r]`), and a module's ΔW is `s·B·A` with both flattened to 2-D.
 * PEFT's SVD types take `get_delta_weight` and transpose it back for embeddings and fan_in_fan_out
 * layers, flatten convolution kernels (squeeze 1×1 ones), decompose, and reshape U into B and Vh
 * into A; in factor space those transposes and reshapes cancel, so every layer kind is one case.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { type Matrix64, type SvdTensors, matrix64, svd, svdFlip, svdOfLowRankSum, svdTruncated } from '@lora/linalg';
import type { LoraConfig } from '../lora-config';
import { magnitudePruneTensor } from './magnitude-prune';
import { mergeArrays } from './merge-arrays';

/** Combination types of PEFT's `add_weighted_adapter`. */
export type CombinationType =
  | 'svd'
  | 'linear'
  | 'cat'
  | 'ties'
  | 'ties_svd'
  | 'dare_linear'
  | 'dare_ties'
  | 'dare_linear_svd'
  | 'dare_ties_svd'
  | 'magnitude_prune'
  | 'magnitude_prune_svd';

/**
 * The eleven combination types, in PEFT's order.
 *
 * @example
 * ```ts
 * COMBINATION_TYPES.includes(userChoice as CombinationType);
 * ```
 */
export const COMBINATION_TYPES: readonly CombinationType[] = [
  'svd',
  'linear',
  'cat',
  'ties',
  'ties_svd',
  'dare_ties',
  'dare_linear',
  'dare_ties_svd',
  'dare_linear_svd',
  'magnitude_prune',
  'magnitude_prune_svd',
];

/** Options of {@link addWeightedAdapter} and {@link combineAdapters}, with PEFT's defaults. */
export interface WeightedAdapterOptions {
  /** Default `'svd'`; with one adapter PEFT always uses `'linear'`. */
  combinationType?: CombinationType;
  /** Rank of the `*svd` types' result. Default (or 0): the largest rank of the adapters, as PEFT. */
  svdRank?: number;
  /**
   * Clamp the SVD factors to this quantile of their values (in [0, 1]). The quantile depends on the
   * signs of the singular vectors, which PEFT takes from LAPACK as they come; here they are fixed as
   * sklearn's `svd_flip` fixes them, so a clamped result can differ from PEFT's by those signs.
   */
  svdClamp?: number;
  /** Fraction of values kept by the pruning types (ties, magnitude_prune, dare and their svd forms), in [0, 1]. */
  density?: number;
  /** How TIES elects the sign of each entry. Default `'total'`. */
  majoritySignMethod?: 'total' | 'frequency';
  /**
   * Seed of DARE's random pruning. PyTorch's `torch.bernoulli` masks cannot be reproduced; here each
   * module draws from its own generator, seeded by this seed and the module's path, so the result
   * depends on neither the order of the modules nor on where the adapters live. Default 0.
   */
  seed?: number;
  /** Stops a long combination between modules and inside the large decompositions (the promise rejects). */
  signal?: AbortSignal;
}

/** Types whose factors are combined directly and that need equal ranks (PEFT's list and wording). */
const SAME_RANK: readonly CombinationType[] = ['linear', 'ties', 'dare_ties', 'dare_linear', 'magnitude_prune'];

/** What {@link planCombination} decides: the type used, the new rank and the new adapter's config. */
export interface CombinationPlan {
  kind: CombinationType;
  rank: number;
  config: LoraConfig;
  options: WeightedAdapterOptions;
}

/** The largest rank an adapter can have on a module (PEFT allocates the combined adapter with it). */
function maxRank(c: LoraConfig): number {
  return Math.max(c.r, ...Object.values(c.rankPattern));
}

function needsDensity(kind: CombinationType): boolean {
  return kind !== 'svd' && kind !== 'linear' && kind !== 'cat';
}

/**
 * Checks the arguments of a combination and decides its type, rank and config, as PEFT's
 * `_check_add_weighted_adapter`: one adapter always combines linearly; `linear`, `ties`,
 * `dare_*` and `magnitude_prune` need equal ranks; `cat` sums them; the svd types take `svdRank`
 * or the largest. The config is the first adapter's with `r = lora_alpha = rank`, no rank or
 * alpha patterns, and the union of the target modules. Two deliberate differences: `lora_bias`
 * and `use_dora` are off (PEFT's combined adapter would keep the bias and magnitude at their
 * initial values; only A and B are combined).
 */
export function planCombination(
  configs: LoraConfig[],
  weights: number[],
  options: WeightedAdapterOptions,
  label: (i: number) => string,
): CombinationPlan {
  if (configs.length === 0) throw new Error('no adapters to combine; pass at least one');
  if (weights.length !== configs.length)
    throw new Error(`${configs.length} adapters but ${weights.length} weights were given; pass one weight per adapter`);
  for (const [i, w] of weights.entries())
    if (typeof w !== 'number' || !Number.isFinite(w))
      throw new Error(`the weight of ${label(i)} is ${String(w)}; weights must be finite numbers`);
  const requested = options.combinationType ?? 'svd';
  if (!COMBINATION_TYPES.includes(requested))
    throw new Error(`Invalid combination_type: ${String(requested)}; use one of ${COMBINATION_TYPES.join(', ')}`);
  const kind: CombinationType = configs.length === 1 ? 'linear' : requested;
  for (const [i, c] of configs.entries()) {
    const tp = c.extra.target_parameters;
    if (tp !== undefined && tp !== null && !(Array.isArray(tp) && tp.length === 0))
      throw new Error(
        `add_weighted_adapter does not support targeting nn.Parameter (problematic adapter '${label(i)}')`,
      );
  }
  const { density, svdClamp, svdRank, seed } = options;
  const majority = options.majoritySignMethod ?? 'total';
  if (majority !== 'total' && majority !== 'frequency')
    throw new Error(`Unimplemented mask method "${String(majority)}"; use 'total' or 'frequency'`);
  if (needsDensity(kind)) {
    if (density === undefined || density === null)
      throw new Error(`combination_type '${kind}' prunes and needs a density in [0, 1] (the fraction of values kept)`);
    if (!(density >= 0)) throw new Error(`Density should be >= 0, got ${density}`);
    if (density === 0 && kind.startsWith('dare'))
      throw new Error(`density 0 makes DARE divide by zero (PEFT's result is NaN); use a density in (0, 1]`);
  }
  if (svdClamp !== undefined && !(svdClamp >= 0 && svdClamp <= 1))
    throw new Error(`quantile() q must be in the range [0, 1] but got ${svdClamp} (svdClamp)`);
  if (svdRank !== undefined && !(Number.isInteger(svdRank) && svdRank >= 0))
    throw new Error(`svdRank must be a positive integer, got ${svdRank}`);
  if (seed !== undefined && !Number.isInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
  const ranks = configs.map(maxRank);
  let rank: number;
  if (SAME_RANK.includes(kind)) {
    if (new Set(ranks).size !== 1) {
      throw new Error(
        `All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear. (ranks ${ranks.join(', ')}; use cat or an svd type)`,
      );
    }
    rank = ranks[0] as number;
  } else if (kind === 'cat') rank = ranks.reduce((a, b) => a + b, 0);
  else rank = svdRank || Math.max(...ranks); // PEFT: `svd_rank or max(...)`, so 0 means the default
  const targets = configs.map((c) => c.targetModules);
  let targetModules: LoraConfig['targetModules'];
  if (targets.every((t) => typeof t === 'string')) targetModules = targets.map((t) => `(${t})`).join('|');
  else if (targets.every((t) => Array.isArray(t))) targetModules = [...new Set(targets.flat() as string[])];
  else if (targets.some((t) => t === null))
    throw new Error(
      `Invalid type <class 'NoneType'> found in target_modules (adapter ${label(targets.indexOf(null))} has no target_modules)`,
    );
  else
    throw new Error(
      'all adapter configs should follow the same target modules type. Combining adapters with `target_modules` type being a mix of list/set and string is not supported.',
    );
  const first = configs[0] as LoraConfig;
  const config: LoraConfig = {
    ...first,
    r: rank,
    loraAlpha: rank,
    rankPattern: {},
    alphaPattern: {},
    targetModules,
    loraBias: false,
    useDora: false,
  };
  return { kind, rank, config, options: { ...options, majoritySignMethod: majority } };
}

/** One adapter's factors on one module, with its scaling there and its weight in the combination. */
export interface SourceFactors {
  a: tf.Tensor;
  b: tf.Tensor;
  scaling: number;
  weight: number;
}

/** Random prune with rescale (PEFT's `prune(t, d, 'random', rescale=True)`), from a seeded generator. */
function randomPrune(t: tf.Tensor, density: number, g: Generator): tf.Tensor {
  if (density >= 1) return tf.clone(t);
  const u = g.fillUniform(new Float32Array(t.size));
  for (let i = 0; i < u.length; i++) u[i] = (u[i] as number) < density ? 1 : 0;
  return tf.tidy(() => tf.div(tf.mul(t, tf.tensor(u, t.shape)), density));
}

/**
 * PEFT's merge functions (`task_arithmetic`, `magnitude_prune`, `ties`, `dare_linear`, `dare_ties`)
 * over task tensors with per-task weights; `kind` names the merge (an `*_svd` type's merge is its prefix).
 * `where`: on float32 arrays on the host (the CPU backends' choice) or with tensor ops (a GPU's); the
 * same result either way.
 * @internal exported for the test that runs both
 */
export async function mergeTaskTensors(
  tensors: tf.Tensor[],
  weights: number[],
  kind: CombinationType,
  o: WeightedAdapterOptions,
  g: Generator,
  where: 'host' | 'backend' = tf.getBackend() === 'webgpu' ? 'backend' : 'host',
): Promise<tf.Tensor> {
  const density = o.density as number;
  const first = tensors[0] as tf.Tensor;
  if (where === 'host') {
    // the same merge on float32 arrays: the CPU backends' topk and scatterND crawl at millions of
    // entries (tfjs-node's topk of 8M out of 16M: a minute); a GPU keeps its tensors
    const values: Float32Array[] = [];
    for (const t of tensors) values.push((await t.data()) as Float32Array);
    const prune = kind.startsWith('dare')
      ? 'random'
      : kind.startsWith('ties') || kind.startsWith('magnitude_prune')
        ? 'magnitude'
        : 'none';
    const ties = kind.includes('ties') ? (o.majoritySignMethod ?? 'total') : false;
    return tf.tensor(mergeArrays(values, weights, prune, ties, density, g), first.shape);
  }
  let pruned = tensors;
  if (kind.startsWith('dare')) pruned = tensors.map((t) => randomPrune(t, density, g));
  else if (kind.startsWith('ties') || kind.startsWith('magnitude_prune')) {
    pruned = await magnitudePruneTensor(tensors, density);
  }
  try {
    return tf.tidy(() => {
      const weighted = pruned.map((t, i) => tf.mul(t, weights[i] as number));
      if (!kind.includes('ties')) return tf.addN(weighted);
      // TIES: elect a sign per entry from the unweighted pruned tensors; average the weighted entries that
      // agree. Sums over the adapters are elementwise additions: a reduction over a stacked axis would
      // transpose it innermost first (tfjs-webgpu reduces the innermost axis only), a copy of every tensor
      const total = (ts: tf.Tensor[]) => (ts.length === 1 ? (ts[0] as tf.Tensor) : tf.addN(ts));
      const signs = pruned.map((t) => tf.sign(t));
      const votes = total(o.majoritySignMethod === 'frequency' ? signs : pruned);
      const elected = tf.where(tf.greaterEqual(votes, 0), tf.onesLike(votes), tf.neg(tf.onesLike(votes)));
      // sign == elected, as 0/1 in float32 arithmetic (tfjs-webgpu mishandles reductions of a cast bool)
      const agree = signs.map((s) => tf.relu(tf.mul(s, elected)));
      return tf.div(total(weighted.map((w, i) => tf.mul(w, agree[i] as tf.Tensor))), tf.maximum(total(agree), 1));
    });
  } finally {
    if (pruned !== tensors) tf.dispose(pruned);
  }
}

/** torch.quantile with linear interpolation, over all values. */
function quantile(values: Float64Array, q: number): number {
  const s = Float64Array.from(values).sort();
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, s.length - 1);
  return (s[lo] as number) + ((s[hi] as number) - (s[lo] as number)) * (pos - lo);
}

/** 32-bit FNV-1a: a module's own DARE seed from the user's seed and its path. */
function moduleSeed(seed: number, path: string): number {
  let h = 0x811c9dc5;
  for (const ch of `${seed}:${path}`) h = Math.imul(h ^ (ch.codePointAt(0) as number), 0x01000193) >>> 0;
  return h;
}

/** a zero-padded (or cut) to `rank` along the rank axis of A (0) and B (1). */
function atRank(a: tf.Tensor, b: tf.Tensor, rank: number): { a: tf.Tensor; b: tf.Tensor } {
  const r = a.shape[0] as number;
  if (r === rank) return { a, b };
  return tf.tidy(() => ({
    a: tf.concat([a, tf.zeros([rank - r, ...a.shape.slice(1)])], 0),
    b: tf.concat([b, tf.zeros([b.shape[0] as number, rank - r, ...b.shape.slice(2)])], 1),
  }));
}

async function toMatrix(t: tf.Tensor, rows: number, cols: number): Promise<Matrix64> {
  return matrix64(rows, cols, (await t.data()) as Float32Array);
}

/** From this min(out, in) on, a full-rank ΔW is decomposed in float32 on the backend (to its top `rank` only). */
const LARGE = 128;

/**
 * The leading singular triplets of a full-rank ΔW (a pruned combination), at least `rank` of them
 * where it has that many. PEFT takes `torch.linalg.svd(ΔW)` whole and keeps the first `rank`; nothing
 * after them reaches the result, so a large ΔW is decomposed to its top `rank` only (svdTruncated,
 * float32 on the backend, within 1e-5 of the exact truncation), or whole on the backend when that
 * stalls. Small ones are decomposed exactly in float64, as before.
 */
async function leadingTriplets(
  delta: tf.Tensor2D,
  rank: number,
  signal: AbortSignal | undefined,
): Promise<{ U: Matrix64; S: Float64Array; Vh: Matrix64 }> {
  const [out, inF] = delta.shape;
  if (Math.min(out, inF) < LARGE) return svd(await toMatrix(delta, out, inF));
  const k = Math.min(rank, out, inF);
  const top = await svdTruncated(delta, { rank: k, signal });
  let r: SvdTensors = top;
  if (!top.converged) {
    tf.dispose([top.U, top.S, top.Vh]);
    r = await svd(delta, { method: 'backend', signal });
  }
  try {
    return {
      U: await toMatrix(r.U, out, r.U.shape[1]),
      S: Float64Array.from((await r.S.data()) as Float32Array),
      Vh: await toMatrix(r.Vh, r.Vh.shape[0], inF),
    };
  } finally {
    tf.dispose([r.U, r.S, r.Vh]);
  }
}

/** PEFT's `_svd_generalized_task_arithmetic_weighted_adapter` on one module, in factor space. */
async function svdCombination(
  sources: SourceFactors[],
  plan: CombinationPlan,
  g: Generator,
  aShape: number[],
  bShape: number[],
): Promise<{ a: tf.Tensor; b: tf.Tensor }> {
  const { rank, kind } = plan;
  const out = bShape[0] as number;
  const inF = aShape.slice(1).reduce((x, y) => x * y, 1);
  const total = sources.reduce((n, s) => n + (s.a.shape[0] as number), 0);
  let U: Matrix64;
  let S: Float64Array;
  let Vh: Matrix64;
  // ΔW has rank ≤ total: past it PEFT's extra singular vectors are arbitrary (S ≈ 0) and B·A is the same
  // with zero padding, unless svdClamp takes its quantile over them too
  const viaFactors =
    kind === 'svd' && total <= Math.min(out, inF) && (rank <= total || plan.options.svdClamp === undefined);
  if (viaFactors) {
    // ΔW = Σ (wᵢ·sᵢ)·Bᵢ·Aᵢ is still low-rank: its exact SVD from the factors, never forming it
    const terms: { b: Matrix64; a: Matrix64; weight: number }[] = [];
    for (const s of sources) {
      const r = s.a.shape[0] as number;
      terms.push({ b: await toMatrix(s.b, out, r), a: await toMatrix(s.a, r, inF), weight: s.weight * s.scaling });
    }
    ({ U, S, Vh } = svdOfLowRankSum(terms));
  } else {
    // pruning acts on each ΔWᵢ = sᵢ·Bᵢ·Aᵢ, which holds its scaling: the weights are w alone (PEFT 0.21)
    const deltas = sources.map((s) =>
      tf.tidy(() =>
        tf.mul(tf.matMul(tf.reshape(s.b, [out, -1]), tf.reshape(s.a, [s.a.shape[0] as number, inF])), s.scaling),
      ),
    );
    let delta: tf.Tensor;
    try {
      delta = await mergeTaskTensors(
        deltas,
        sources.map((s) => s.weight),
        kind === 'svd' ? 'linear' : (kind.replace(/_svd$/, '') as CombinationType),
        plan.options,
        g,
      );
    } finally {
      tf.dispose(deltas);
    }
    try {
      ({ U, S, Vh } = await leadingTriplets(delta as tf.Tensor2D, rank, plan.options.signal));
    } finally {
      delta.dispose();
    }
  }
  // LAPACK leaves each singular pair's sign arbitrary, and svdClamp's quantile depends on it: fix the
  // signs as sklearn's svd_flip (the largest |entry| of each column of U positive), on either path
  ({ U, Vh } = svdFlip(U, Vh));
  // B = U[:, :rank]·diag(S[:rank]), A = Vh[:rank]; zero-padded where ΔW has fewer singular triplets than the rank
  const k = Math.min(rank, S.length);
  const u = new Float64Array(out * rank);
  const v = new Float64Array(rank * inF);
  for (let i = 0; i < out; i++)
    for (let j = 0; j < k; j++) u[i * rank + j] = (U.data[i * U.cols + j] as number) * (S[j] as number);
  for (let j = 0; j < k; j++) for (let c = 0; c < inF; c++) v[j * inF + c] = Vh.data[j * Vh.cols + c] as number;
  const clamp = plan.options.svdClamp;
  if (clamp !== undefined) {
    const all = new Float64Array(u.length + v.length);
    all.set(u);
    all.set(v, u.length);
    const hi = quantile(all, clamp);
    for (const arr of [u, v])
      for (let i = 0; i < arr.length; i++) arr[i] = Math.min(hi, Math.max(-hi, arr[i] as number));
  }
  return {
    b: tf.tensor(Float32Array.from(u), [out, rank, ...bShape.slice(2)]),
    a: tf.tensor(Float32Array.from(v), [rank, ...aShape.slice(1)]),
  };
}

/**
 * Combines the factors of the adapters on one module (`sources`, in the adapters' order, only those
 * present there) into the new adapter's A and B at `plan.rank`, as PEFT's `add_weighted_adapter`:
 * - `cat`: A = [c₁·A₁; …] and B = [B₁ … ] with cᵢ = wᵢ·sᵢ;
 * - `linear`, `ties`, `dare_*`, `magnitude_prune`: A and B merged separately with weights
 *   sign(cᵢ)·√|cᵢ| and √|cᵢ|;
 * - `*svd`: the top singular triplets of the merged ΔWᵢ = sᵢ·Bᵢ·Aᵢ (weights wᵢ).
 * Results narrower than the rank are zero-padded (same B·A): `cat` as PEFT does, and the directly
 * merged types where rank patterns give the module a smaller rank than the adapter's largest (PEFT
 * keeps the narrower tensors, which its own loader then rejects for their shape). The caller owns both tensors.
 */
export async function combineModuleFactors(
  path: string,
  sources: SourceFactors[],
  plan: CombinationPlan,
): Promise<{ a: tf.Tensor; b: tf.Tensor }> {
  const first = sources[0];
  if (!first) throw new Error(`no adapter has module '${path}'`);
  plan.options.signal?.throwIfAborted();
  const { kind, rank } = plan;
  const aShape = first.a.shape;
  const bShape = first.b.shape;
  for (const s of sources) {
    const r = s.a.shape[0];
    const fits =
      s.a.shape.slice(1).join() === aShape.slice(1).join() &&
      s.b.shape[0] === bShape[0] &&
      s.b.shape[1] === r &&
      s.b.shape.slice(2).every((d) => d === 1) &&
      s.b.rank === bShape.length;
    if (!fits) {
      throw new Error(
        `the adapters disagree on the shape of '${path}' (lora_A [${aShape}] and [${s.a.shape}], lora_B [${bShape}] and [${s.b.shape}]); were they trained on the same base model?`,
      );
    }
  }
  const g = new Generator(moduleSeed(plan.options.seed ?? 0, path));
  if (kind === 'cat') {
    const used = sources.reduce((n, s) => n + (s.a.shape[0] as number), 0);
    if (used > rank) throw new Error(`module '${path}' has rank ${used} in all, more than the combined rank ${rank}`);
    const joined = tf.tidy(() => ({
      a: tf.concat(
        sources.map((s) => tf.mul(s.a, s.weight * s.scaling)),
        0,
      ),
      b: tf.concat(
        sources.map((s) => s.b),
        1,
      ),
    }));
    const padded = atRank(joined.a, joined.b, rank);
    if (padded.a !== joined.a) tf.dispose([joined.a, joined.b]);
    return padded;
  }
  if (!SAME_RANK.includes(kind)) return svdCombination(sources, plan, g, aShape, bShape);
  const ranks = sources.map((s) => s.a.shape[0] as number);
  if (new Set(ranks).size !== 1) {
    throw new Error(
      `the adapters have different ranks on '${path}' (${ranks.join(', ')}, from their rank_pattern); combination_type '${kind}' needs equal ranks, use cat or an svd type`,
    );
  }
  const c = sources.map((s) => s.weight * s.scaling);
  // the sign goes on A only, or two negative signs would cancel
  const a = await mergeTaskTensors(
    sources.map((s) => s.a),
    c.map((v) => (v >= 0 ? 1 : -1) * Math.sqrt(Math.abs(v))),
    kind,
    plan.options,
    g,
  );
  let b: tf.Tensor;
  try {
    b = await mergeTaskTensors(
      sources.map((s) => s.b),
      c.map((v) => Math.sqrt(Math.abs(v))),
      kind,
      plan.options,
      g,
    );
  } catch (e) {
    a.dispose();
    throw e;
  }
  const padded = atRank(a, b, rank);
  if (padded.a !== a) tf.dispose([a, b]);
  return padded;
}
