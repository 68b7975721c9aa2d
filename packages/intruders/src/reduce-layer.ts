import type { Matrix64 } from '@lora/linalg';
import * as tf from '@tensorflow/tfjs-core';
import { type FactorLayout, factorsToMatrices, matricesToFactors } from './layouts';
import { type ResolvedSettings, onCpuBackend } from './options';
import { analyseFromSum, decides, type SumTriplets, sumTriplets } from './analyse-sum';
import { analyseMatrix, type MatrixAnalysis, thresholdAndMitigate } from './reduce-matrix';
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
  /**
   * Whether `cosine` holds upper bounds (each below `thresholdEpsilon`: the layer's intruders were
   * certified without W's SVD) rather than the cosines themselves; `exactCosines` makes them exact.
   */
  cosineBound: boolean;
  /** How the leading directions and cosines were found (see the README's cost table). */
  method: string;
  /**
   * Wall seconds of this layer's analysis (≈ 0 when it came from the cache) and mitigation, and of the
   * analysis' phases computed in this call (`triplets`, `bounds`, `svd`, `cosines`, `core`).
   */
  seconds: { analysis: number; mitigation: number; phases: Record<string, number> };
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
 * PEFT's per-layer step: the new A and B values (in their own shapes), or null when there are no
 * intruders (PEFT copies the old factors), and the line PEFT logs for the layer (the caller logs it,
 * in layer order).
 */
export async function reduceLayer(
  input: LayerInput,
  settings: ResolvedSettings,
  cache: WeightSvdCache,
): Promise<{ report: IntruderLayerReport; factors: { a: Float32Array; b: Float32Array } | null; line: string }> {
  const { layout, scaling } = input;
  const { left, right } = factorsToMatrices(layout, input.a, input.b);
  const epsilon = settings.thresholdEpsilon;
  const phases: Record<string, number> = {};
  const t0 = performance.now();
  const analysis = await cache.analysisOf(
    `${input.weightKey}|${input.path}|${scaling}`,
    [...(input.weightVersion ? [input.weightVersion] : []), ...input.factorVersions],
    settings.topK,
    () => analyseLayer(input, left, right, settings, cache, phases),
    (a) => decides(a, settings.topK, epsilon) && (!settings.exactCosines || !a.cosineBound),
  );
  const t1 = performance.now();
  const result = thresholdAndMitigate({ left, right, scaling }, settings, analysis);
  const t2 = performance.now();
  const module = `base_model.model.${input.path}`;
  const line = result.intruders.length ? `${module}: Intruders: ${result.intruders.length}` : `${module}: No intruders`;
  const examined = Math.min(settings.topK, analysis.cosine.length);
  const report: IntruderLayerReport = {
    path: input.path,
    module,
    intruders: result.intruders,
    cosine: [...analysis.cosine.subarray(0, examined)],
    singularValues: [...analysis.singularValues.subarray(0, examined)],
    cosineBound: analysis.cosineBound,
    method: describe(analysis.method),
    seconds: { analysis: (t1 - t0) / 1000, mitigation: (t2 - t1) / 1000, phases },
  };
  return {
    report,
    factors: result.factors ? matricesToFactors(layout, result.factors.left, result.factors.right) : null,
    line,
  };
}

function describe(method: MatrixAnalysis['method']): string {
  switch (method.kind) {
    case 'krylov':
      return `krylov (dimension ${method.dimension}, ${method.cycles} cycles)`;
    case 'dense':
      return `dense ${method.size.join('×')}`;
    case 'sum':
      return `sum (${method.iterations} iterations), cosines from W's SVD`;
    case 'certified':
      return `certified (${method.iterations} iterations, Lanczos ≤ ${method.lanczosSteps} steps), no SVD of W`;
  }
}

/**
 * One layer's analysis, the cheapest way that gives PEFT's decision: W + ΔW's leading triplets from
 * W + ΔW itself on the backend; then, if W's SVD is not held and `certify` is on, the cosine bounds
 * of `certify.ts`, accepted when they make every direction an intruder; otherwise W's SVD (computed
 * once, cached) and the exact cosines. On a CPU backend without the certificate: W's SVD and the
 * core path of `reduce-matrix.ts` directly. Where subspace iteration stalls (a cluster at the topK-th
 * value), the core path of `reduce-matrix.ts` (float64 block Lanczos on W's SVD) instead.
 */
async function analyseLayer(
  input: LayerInput,
  left: Matrix64,
  right: Matrix64,
  settings: ResolvedSettings,
  cache: WeightSvdCache,
  phases: Record<string, number>,
): Promise<MatrixAnalysis> {
  const { m, n } = input.layout;
  const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    try {
      return await f();
    } finally {
      phases[name] = (phases[name] ?? 0) + (performance.now() - start) / 1000;
    }
  };
  const t = Math.min(settings.topK, m, n);
  const held = cache.has(input.weightKey, input.weightVersion);
  const certify = settings.certify && !settings.exactCosines && !held;
  // on a CPU backend, unless the certificate is to be tried, W's SVD and the core path's products
  // (O((k + r)·r) each, on the host) cost less than products with W + ΔW (O(m·n)); on a GPU the latter
  // are nearly free and the host work is less
  if (!certify && onCpuBackend()) {
    const weight = await timed('svd', () => cache.svdOf(input.weightKey, input.weightVersion, input.weightMatrix));
    return timed('core', () => analyseMatrix({ m, n, weight, left, right, scaling: input.scaling }, settings.topK));
  }
  let top: SumTriplets | null = null;
  // W once: the triplets, the bounds, and (cloned: the cache frees what it decomposes) W's SVD
  const w = input.weightMatrix();
  try {
    top = await timed('triplets', () => sumTriplets(w, left, right, input.scaling, t));
    const found = top;
    if (found.converged && certify) {
      const certified = await timed('bounds', () =>
        analyseFromSum(found, w, null, settings.thresholdEpsilon, {
          known: cache.floorOf(input.weightKey, input.weightVersion),
          record: (floor) => cache.recordFloor(input.weightKey, input.weightVersion, floor),
        }),
      );
      if (certified) return certified;
    }
    const weight = await timed('svd', () => cache.svdOf(input.weightKey, input.weightVersion, () => tf.clone(w)));
    if (found.converged)
      return (await timed('cosines', () =>
        analyseFromSum(found, null, weight, settings.thresholdEpsilon),
      )) as MatrixAnalysis;
    return await timed('core', () =>
      analyseMatrix({ m, n, weight, left, right, scaling: input.scaling }, settings.topK),
    );
  } finally {
    top?.uTensor.dispose();
    w.dispose();
  }
}
