import type * as tf from '@tensorflow/tfjs-core';
import { type FactorLayout, factorsToMatrices, matricesToFactors } from './layouts';
import type { ResolvedSettings } from './options';
import { analyseMatrix, reduceMatrix } from './reduce-matrix';
import type { WeightSvdCache } from './weight-svd-cache';

/** What intruder reduction found on one layer (returned by both entry points, in PEFT's layer order). */
export interface IntruderLayerReport {
  /** The module's path in the user's model (`model.layers.0.self_attn.q_proj`). */
  path: string;
  /** The name PEFT's log lines use: `base_model.model.<path>`. */
  module: string;
  /** The directions of W + ΔW found to be intruders (indices among the leading `topK`). */
  intruders: number[];
  /** Each leading direction's largest |cosine| with W's left singular vectors. */
  cosine: number[];
  /** W + ΔW's leading singular values. */
  singularValues: number[];
  /** How the leading directions were found (block Krylov on the core and its dimension, or a dense SVD of the core). */
  method: string;
}

/** One layer, ready to reduce: its layout, where W's SVD comes from, A's and B's values, s. */
export interface LayerInput {
  path: string;
  layout: FactorLayout;
  /** The cache key and data version of W (and of the factors) for the caches. */
  weightKey: string;
  weightVersion: object | null;
  factorVersions: readonly (object | string)[];
  /** W as an m×n tensor (the cache frees it once decomposed). */
  weightMatrix: () => tf.Tensor2D;
  a: ArrayLike<number>;
  b: ArrayLike<number>;
  scaling: number;
}

/**
 * PEFT's per-layer step, logged as PEFT logs it: the new A and B values (in their own shapes), or
 * null when there are no intruders (PEFT copies the old factors).
 */
export async function reduceLayer(
  input: LayerInput,
  settings: ResolvedSettings,
  cache: WeightSvdCache,
): Promise<{ report: IntruderLayerReport; factors: { a: Float32Array; b: Float32Array } | null }> {
  const { layout, scaling } = input;
  const { left, right } = factorsToMatrices(layout, input.a, input.b);
  const weight = await cache.svdOf(input.weightKey, input.weightVersion, input.weightMatrix);
  const problem = { m: layout.m, n: layout.n, weight, left, right, scaling };
  const analysis = await cache.analysisOf(
    `${input.weightKey}|${input.path}|${scaling}`,
    [...(input.weightVersion ? [input.weightVersion] : []), ...input.factorVersions],
    settings.topK,
    () => analyseMatrix(problem, settings.topK),
  );
  const result = await reduceMatrix(problem, settings, analysis);
  const module = `base_model.model.${input.path}`;
  settings.log(
    result.intruders.length ? `${module}: Intruders: ${result.intruders.length}` : `${module}: No intruders`,
  );
  const examined = Math.min(settings.topK, analysis.cosine.length);
  const report: IntruderLayerReport = {
    path: input.path,
    module,
    intruders: result.intruders,
    cosine: [...analysis.cosine.subarray(0, examined)],
    singularValues: [...analysis.singularValues.subarray(0, examined)],
    method:
      analysis.method.kind === 'krylov'
        ? `krylov (dimension ${analysis.method.dimension}, ${analysis.method.cycles} cycles)`
        : `dense ${analysis.method.size.join('×')}`,
  };
  return {
    report,
    factors: result.factors ? matricesToFactors(layout, result.factors.left, result.factors.right) : null,
  };
}
