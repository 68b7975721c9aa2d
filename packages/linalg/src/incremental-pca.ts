import type * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import {
  type Matrix64,
  assertFinite,
  isMatrix64,
  matmul64,
  matrix64ToTensor,
  tensorToMatrix64,
  transpose64,
} from './matrix64';
import { svd64 } from './svd-float64';
import { svdFlip } from './svd-flip';
import { svdLowRank } from './svd-low-rank';

/** Options for {@link IncrementalPCA}, as PEFT's `IncrementalPCA(n_components, lowrank, lowrank_q, lowrank_niter, lowrank_seed)`. */
export interface IncrementalPCAOptions {
  /** Components to keep. Default: min(samples, features) of the first batch. */
  nComponents?: number;
  /** Use {@link svdLowRank} instead of the exact SVD (what EVA does). Default false. */
  lowRank?: boolean;
  /** Sketch size for the low-rank SVD. Default `2 * nComponents`; must be at least nComponents. */
  lowRankQ?: number;
  /** Subspace iterations of the low-rank SVD. Default 4. */
  lowRankNiter?: number;
  /** Seed of every low-rank SVD (PEFT reseeds each call). Default 0; EVA uses 42. */
  lowRankSeed?: number;
}

/**
 * Incremental PCA over batches of rows, the scikit-learn algorithm as PEFT ports it for EVA:
 * running mean and variance by Chan's update (float64), each batch stacked under the previous
 * components (scaled by their singular values) and a mean-correction row, then an SVD whose signs
 * are fixed by {@link svdFlip} on Vh's rows. Everything is float64; tensors are read once per batch.
 *
 * @example
 * ```ts
 * const ipca = new IncrementalPCA({ nComponents: 8, lowRank: true, lowRankSeed: 42 });
 * for (const batch of activations) await ipca.partialFit(batch);   // tf.Tensor2D (n, d) each
 * console.log(ipca.explainedVarianceRatio);                        // Float64Array(8)
 * ```
 */
export class IncrementalPCA {
  nComponents: number | undefined;
  readonly lowRank: boolean;
  readonly lowRankQ: number | undefined;
  readonly lowRankNiter: number;
  readonly lowRankSeed: number;
  /** k×d principal directions (rows), or null before the first batch. */
  components: Matrix64 | null = null;
  singularValues: Float64Array | null = null;
  explainedVariance: Float64Array | null = null;
  explainedVarianceRatio: Float64Array | null = null;
  /** Mean of every row seen, per feature. */
  mean: Float64Array | null = null;
  /** Population variance of every row seen, per feature. */
  var: Float64Array | null = null;
  /** Mean of the discarded components' explained variance (0 when none are discarded, as PEFT). */
  noiseVariance = 0;
  nSamplesSeen = 0;
  nFeatures: number | null = null;

  constructor(options: IncrementalPCAOptions = {}) {
    this.nComponents = options.nComponents;
    this.lowRank = options.lowRank ?? false;
    this.lowRankNiter = options.lowRankNiter ?? 4;
    this.lowRankSeed = options.lowRankSeed ?? 0;
    if (this.nComponents !== undefined && (!Number.isInteger(this.nComponents) || this.nComponents < 1)) {
      throw new LinalgError(`IncrementalPCA: nComponents = ${this.nComponents} must be a positive integer`);
    }
    if (this.lowRank) {
      if (options.lowRankQ === undefined) {
        if (this.nComponents === undefined)
          throw new LinalgError('IncrementalPCA: nComponents must be specified when using lowRank with lowRankQ unset');
        this.lowRankQ = this.nComponents * 2;
      } else {
        if (this.nComponents !== undefined && options.lowRankQ < this.nComponents) {
          throw new LinalgError(
            `IncrementalPCA: lowRankQ = ${options.lowRankQ} must be greater than or equal to nComponents = ${this.nComponents}`,
          );
        }
        this.lowRankQ = options.lowRankQ;
      }
    } else {
      this.lowRankQ = options.lowRankQ;
    }
  }

  /**
   * Updates the fit with one batch of rows (n samples × d features). A Matrix64 updates synchronously;
   * a tensor is read with `await data()` first.
   */
  partialFit(x: Matrix64): this;
  partialFit(x: tf.Tensor2D): Promise<this>;
  partialFit(x: Matrix64 | tf.Tensor2D): this | Promise<this> {
    if (isMatrix64(x)) return this.fit64(x);
    return tensorToMatrix64(x, 'IncrementalPCA.partialFit').then((m) => this.fit64(m));
  }

  private fit64(x: Matrix64): this {
    assertFinite(x, 'IncrementalPCA.partialFit');
    const { rows: n, cols: d } = x;
    const k0 = this.nComponents;
    if (k0 !== undefined && k0 > d) {
      throw new LinalgError(
        `IncrementalPCA: nComponents=${k0} invalid for n_features=${d}, need more rows than columns for IncrementalPCA processing`,
      );
    }
    if (k0 !== undefined && k0 > n) {
      throw new LinalgError(
        `IncrementalPCA: nComponents=${k0} must be less or equal to the batch number of samples ${n}`,
      );
    }
    const first = this.components === null;
    if (first) {
      this.nFeatures = d;
      this.nComponents ??= Math.min(n, d);
    } else if (d !== this.nFeatures) {
      throw new LinalgError(
        `IncrementalPCA: the batch has ${d} features but the first batch had ${this.nFeatures}; every batch must have the same number`,
      );
    }
    if (n === 0) return this;
    const k = this.nComponents as number;

    // Chan's parallel update of mean and (population) variance, in float64.
    const seen = this.nSamplesSeen;
    const total = seen + n;
    const newSum = new Float64Array(d);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < d; j++) newSum[j] = (newSum[j] as number) + (x.data[i * d + j] as number);
    const batchMean = newSum.map((s) => s / n);
    const unnormalized = new Float64Array(d);
    const correction = new Float64Array(d);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < d; j++) {
        const t = (x.data[i * d + j] as number) - (batchMean[j] as number);
        correction[j] = (correction[j] as number) + t;
        unnormalized[j] = (unnormalized[j] as number) + t * t;
      }
    const mean = new Float64Array(d);
    const variance = new Float64Array(d);
    for (let j = 0; j < d; j++) {
      const newVar = (unnormalized[j] as number) - (correction[j] as number) ** 2 / n;
      const lastSum = first ? 0 : (this.mean as Float64Array)[j]! * seen;
      mean[j] = (lastSum + (newSum[j] as number)) / total;
      if (first) {
        variance[j] = newVar / total;
      } else {
        const lastOverNew = seen / n;
        const lastUnnormalized = (this.var as Float64Array)[j]! * seen;
        variance[j] =
          (lastUnnormalized + newVar + (lastOverNew / total) * (lastSum / lastOverNew - (newSum[j] as number)) ** 2) /
          total;
      }
    }

    // The matrix to decompose: the centred batch, under the previous components and a mean correction.
    let stacked: Matrix64;
    if (first) {
      stacked = { rows: n, cols: d, data: x.data.map((v, i) => v - (mean[i % d] as number)) };
    } else {
      const comps = this.components as Matrix64;
      const sv = this.singularValues as Float64Array;
      const rows = comps.rows + n + 1;
      const data = new Float64Array(rows * d);
      for (let r = 0; r < comps.rows; r++)
        for (let j = 0; j < d; j++) data[r * d + j] = (sv[r] as number) * (comps.data[r * d + j] as number);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < d; j++)
          data[(comps.rows + i) * d + j] = (x.data[i * d + j] as number) - (batchMean[j] as number);
      const factor = Math.sqrt((seen / total) * n);
      const old = this.mean as Float64Array;
      for (let j = 0; j < d; j++) data[(rows - 1) * d + j] = factor * ((old[j] as number) - (batchMean[j] as number));
      stacked = { rows, cols: d, data };
    }

    let U: Matrix64;
    let S: Float64Array;
    let Vh: Matrix64;
    if (this.lowRank) {
      // PEFT decomposes the first batch in float32 and later stacks in float64 (the mean-correction
      // row promotes them); torch draws the sketch in that dtype, so the normals differ.
      const sketchDtype = first ? 'float32' : 'float64';
      const r = svdLowRank(stacked, {
        q: this.lowRankQ as number,
        niter: this.lowRankNiter,
        seed: this.lowRankSeed,
        sketchDtype,
      });
      U = r.U;
      S = r.S;
      Vh = transpose64(r.V);
    } else {
      ({ U, S, Vh } = svd64(stacked, false, 'IncrementalPCA.partialFit'));
    }
    ({ Vh } = svdFlip(U, Vh, { uBasedDecision: false }));

    let totalSquares = 0;
    for (let j = 0; j < d; j++) totalSquares += (variance[j] as number) * total;
    const explained = S.map((s) => (s * s) / (total - 1));
    this.nSamplesSeen = total;
    this.components = { rows: Math.min(k, Vh.rows), cols: d, data: Vh.data.slice(0, Math.min(k, Vh.rows) * d) };
    this.singularValues = S.slice(0, k);
    this.mean = mean;
    this.var = variance;
    this.explainedVariance = explained.slice(0, k);
    this.explainedVarianceRatio = S.slice(0, k).map((s) => (s * s) / totalSquares);
    if (k !== n && k !== d) {
      const rest = explained.slice(k);
      this.noiseVariance = rest.length ? rest.reduce((a, b) => a + b, 0) / rest.length : Number.NaN;
    } else {
      this.noiseVariance = 0;
    }
    return this;
  }

  /**
   * Projects rows onto the components: `(x − mean)·componentsᵀ`.
   *
   * @example
   * ```ts
   * const z = ipca.transform(matrix64(rows)); // n × k
   * ```
   */
  transform(x: Matrix64): Matrix64;
  transform(x: tf.Tensor2D): Promise<tf.Tensor2D>;
  transform(x: Matrix64 | tf.Tensor2D): Matrix64 | Promise<tf.Tensor2D> {
    if (this.components === null || this.mean === null)
      throw new LinalgError('IncrementalPCA.transform: call partialFit first');
    const comps = this.components;
    const mean = this.mean;
    const project = (m: Matrix64) => {
      if (m.cols !== comps.cols)
        throw new LinalgError(`IncrementalPCA.transform: x has ${m.cols} features, the fit has ${comps.cols}`);
      return matmul64(
        { rows: m.rows, cols: m.cols, data: m.data.map((v, i) => v - (mean[i % m.cols] as number)) },
        comps,
        { transposeB: true },
      );
    };
    if (isMatrix64(x)) return project(x);
    return tensorToMatrix64(x, 'IncrementalPCA.transform').then((m) => matrix64ToTensor(project(m)));
  }
}
