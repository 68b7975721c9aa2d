/**
 * EVA's incremental PCA, one per hook layer, updated for many layers at once. PEFT runs
 * `IncrementalPCA(n_components=k, lowrank=True, lowrank_seed=42).partial_fit(x)` per layer per batch,
 * in float64 after the first batch. Here the layers of equal shapes are stacked and updated together in
 * float32 on the active backend (`'float32'`, the default), or one by one in float64 on the CPU with
 * `@lora/linalg`'s IncrementalPCA, PEFT's arithmetic exactly (`'float64'`, for small models and checks).
 */
import * as tf from '@tensorflow/tfjs-core';
import { IncrementalPCA } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import {
  type Stack,
  disposeStack,
  perMatrix,
  stackShape,
  stackValues as stackValuesOf,
  svdExactBatched,
  svdLowRankBatched,
  svdLowRankOnBackend,
} from './low-rank-batched';
import { factorsOnBackend } from './small-factor';

/** Where the incremental PCA runs: float32 on the active backend (default) or float64 on the CPU. */
export type IpcaPrecision = 'float32' | 'float64';

/** PEFT's `lowrank_seed`, `lowrank_niter` and the sketch size of EVA's IncrementalPCA. */
const SEED = 42;
const NITER = 4;

/**
 * The running state of one hook layer: PEFT's `SVDHook` (its IncrementalPCA and `converged`).
 * Components are kept on the backend (float32) for the next update and on the CPU for the
 * convergence test and the result.
 */
export class LayerPca {
  readonly name: string;
  /** n_components: the most components this layer (or its equal-input group) may take. */
  readonly k: number;
  /** Sketch columns: 2k, as PEFT's IncrementalPCA (lowrank_q = 2·n_components). */
  readonly q: number;
  nSeen = 0;
  mean: Float64Array | null = null;
  variance: Float64Array | null = null;
  /**
   * [k, d] rows (unit, sign-fixed), or null before the first update and while they are only on the
   * backend (see {@link LayerPca.componentRows}).
   */
  components: Float32Array | Float64Array | null = null;
  singularValues: Float64Array | null = null;
  explainedVarianceRatio: Float64Array | null = null;
  /** Per component: its cosine with the previous update's is at least tau. */
  converged: boolean[];
  /** How many batches updated it. */
  updates = 0;
  private tensor: tf.Tensor2D | null = null;
  private reference: IncrementalPCA | null = null;

  constructor(name: string, k: number) {
    this.name = name;
    this.k = k;
    this.q = 2 * k;
    this.converged = new Array<boolean>(k).fill(false);
  }

  /** The components as a backend tensor (kept by this object). */
  get componentsTensor(): tf.Tensor2D | null {
    return this.tensor;
  }

  /** Whether an update has set components. */
  get fitted(): boolean {
    return this.components !== null || this.tensor !== null;
  }

  /** The [k, d] component rows on the CPU, read from the backend when only there; null before the first update. */
  async componentRows(): Promise<Float32Array | Float64Array | null> {
    if (this.components === null && this.tensor !== null) this.components = (await this.tensor.data()) as Float32Array;
    return this.components;
  }

  /** @internal components left on the backend, with each one's cosine to the previous update's (null on the first). */
  setComponentsOnBackend(tensor: tf.Tensor2D, cosines: ArrayLike<number> | null, tau: number): void {
    this.components = null;
    this.tensor?.dispose();
    this.tensor = tensor;
    if (cosines) this.converged = Array.from({ length: this.k }, (_, i) => (cosines[i] as number) >= tau);
  }

  /** @internal */
  setComponents(rows: Float32Array | Float64Array, d: number, tensor: tf.Tensor2D | null, tau: number): void {
    const prev = this.components;
    this.components = rows;
    this.tensor?.dispose();
    this.tensor = tensor;
    if (prev) this.converged = rowCosines(rows, prev, this.k, d).map((c) => c >= tau);
  }

  /** @internal the float64 reference IPCA of this layer (created on first use). */
  referencePca(): IncrementalPCA {
    this.reference ??= new IncrementalPCA({ nComponents: this.k, lowRank: true, lowRankSeed: SEED });
    return this.reference;
  }

  dispose(): void {
    this.tensor?.dispose();
    this.tensor = null;
  }
}

/** torch.nn.functional.cosine_similarity of matching rows: x·y / max(‖x‖·‖y‖, 1e-8). */
function rowCosines(a: ArrayLike<number>, b: ArrayLike<number>, k: number, d: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < k; i++) {
    let xy = 0;
    let xx = 0;
    let yy = 0;
    for (let j = 0; j < d; j++) {
      const x = a[i * d + j] as number;
      const y = b[i * d + j] as number;
      xy += x * y;
      xx += x * x;
      yy += y * y;
    }
    out.push(xy / Math.max(Math.sqrt(xx * yy), 1e-8));
  }
  return out;
}

/** The same sign rule as PEFT's `_svd_flip(u_based_decision=False)`: each row's largest |entry| made positive. */
function flipRows(rows: Float32Array, k: number, d: number): Float32Array {
  const signs = new Float32Array(k);
  for (let i = 0; i < k; i++) {
    let best = 0;
    let bestAbs = -1;
    for (let j = 0; j < d; j++) {
      const v = Math.abs(rows[i * d + j] as number);
      if (v > bestAbs) {
        bestAbs = v;
        best = j;
      }
    }
    signs[i] = (rows[i * d + best] as number) < 0 ? -1 : 1;
    if (signs[i] === -1) for (let j = 0; j < d; j++) rows[i * d + j] = -(rows[i * d + j] as number);
  }
  return signs;
}

/**
 * {@link flipRows} and {@link rowCosines} on the backend for a stack of components [L, k, d]: each
 * row's largest |entry| made positive (the first such entry, as torch's argmax), and each row's
 * cosine with the same row of `prev` (when given). Inside a tidy.
 */
function flipAndCompare(
  Vt: tf.Tensor3D,
  prev: tf.Tensor2D[] | null,
): { flipped: tf.Tensor3D; cosines: tf.Tensor2D | null } {
  const d = Vt.shape[2];
  const at = tf.argMax(tf.abs(Vt), 2) as tf.Tensor2D;
  const picked = tf.sum(tf.mul(tf.oneHot(at, d, 1, 0, 'float32'), Vt), 2, true);
  const flipped = tf.mul(Vt, tf.sub(1, tf.mul(2, tf.cast(tf.less(picked, 0), 'float32')))) as tf.Tensor3D;
  if (!prev) return { flipped, cosines: null };
  const p = tf.stack(prev) as tf.Tensor3D;
  const dot = tf.sum(tf.mul(flipped, p), 2);
  const norms = tf.sqrt(tf.mul(tf.sum(tf.square(flipped), 2), tf.sum(tf.square(p), 2)));
  return { flipped, cosines: tf.div(dot, tf.maximum(norms, 1e-8)) as tf.Tensor2D };
}

/** Cache of PEFT's sketches: `manual_seed(42); randn(cols, q)` in float32 (first batch) or float64 (later). */
class Sketches {
  private readonly cache = new Map<string, tf.Tensor2D>();
  get(cols: number, q: number, dtype: 'float32' | 'float64'): tf.Tensor2D {
    const key = `${cols}x${q}:${dtype}`;
    let t = this.cache.get(key);
    if (!t) {
      const g = new Generator(SEED);
      const values =
        dtype === 'float32'
          ? g.fillNormal(new Float32Array(cols * q))
          : Float32Array.from(g.fillNormal64(new Float64Array(cols * q)));
      t = tf.tensor2d(values, [cols, q]);
      this.cache.set(key, t);
    }
    return t;
  }
  dispose(): void {
    for (const t of this.cache.values()) t.dispose();
    this.cache.clear();
  }
}

/** See {@link IpcaUpdaterOptions.maxStackValues}. */
function defaultMaxStackValues(): number {
  const base = 2 ** 25;
  if (tf.getBackend() !== 'webgpu') return base;
  const limits = (
    tf.backend() as { device?: { limits?: { maxStorageBufferBindingSize?: number; maxBufferSize?: number } } }
  ).device?.limits;
  const bytes = Math.min(limits?.maxStorageBufferBindingSize ?? 0, limits?.maxBufferSize ?? 0);
  return Math.max(base, Math.min(2 ** 28, Math.floor(bytes / 4)));
}

/** One layer's batch for {@link IpcaUpdater.update}: its prepared inputs [n, d] (the caller keeps them). */
export interface IpcaEntry {
  layer: LayerPca;
  x: tf.Tensor2D;
}

/** Options of {@link IpcaUpdater}. */
export interface IpcaUpdaterOptions {
  precision?: IpcaPrecision;
  /** The convergence threshold on each component's cosine with its previous value (EVA's tau). */
  tau: number;
  /**
   * Most float32 values one stacked update may hold; larger groups are split. Default 2^25 (128 MB,
   * WebGPU's default binding limit), or on webgpu what the device's `maxStorageBufferBindingSize`
   * and `maxBufferSize` allow, up to 2^28 (1 GiB): fewer, larger stacks dispatch fewer kernels.
   */
  maxStackValues?: number;
  /**
   * Keep the randomized SVD's q×q factorisations, the sign fix and the convergence test on the
   * backend, so that a batch's update reads back once (its statistics, singular values and cosines
   * in one read) instead of at every CholeskyQR pass. Default: on webgpu, where each read-back waits
   * for the queue to drain; elsewhere the q×q work runs on the CPU in float64 (on wasm and cpu a
   * read is a copy). Only the cpu and webgpu backends can run it.
   */
  factorOnBackend?: boolean;
}

/**
 * Updates hook layers' incremental PCAs with one batch each, as PEFT's `SVDHook.__call__` (without its
 * skip rule, which the caller applies). Layers of equal shapes share one stacked decomposition; groups
 * of different shapes run concurrently, so that their round trips to the CPU overlap.
 */
export class IpcaUpdater {
  private readonly sketches = new Sketches();
  readonly precision: IpcaPrecision;
  private readonly tau: number;
  private readonly maxStackValues: number;
  private readonly onBackend: boolean;

  constructor(options: IpcaUpdaterOptions) {
    this.precision = options.precision ?? 'float32';
    this.tau = options.tau;
    this.maxStackValues = options.maxStackValues ?? defaultMaxStackValues();
    const wanted = options.factorOnBackend ?? tf.getBackend() === 'webgpu';
    if (wanted && !factorsOnBackend())
      throw new Error(
        `factorOnBackend needs the webgpu or cpu backend; the active one is '${tf.getBackend()}' (leave factorOnBackend unset there)`,
      );
    this.onBackend = wanted;
  }

  async update(entries: IpcaEntry[]): Promise<void> {
    if (this.precision === 'float64') {
      for (const e of entries) await this.updateReference(e);
      return;
    }
    const groups = new Map<string, IpcaEntry[]>();
    for (const e of entries) {
      const [n, d] = e.x.shape;
      const key = `${e.layer.nSeen === 0}|${n}|${d}|${e.layer.k}`;
      const list = groups.get(key) ?? [];
      list.push(e);
      groups.set(key, list);
    }
    const chunks: IpcaEntry[][] = [];
    for (const list of groups.values()) {
      const [n, d] = (list[0] as IpcaEntry).x.shape;
      const per = Math.max(1, Math.floor(this.maxStackValues / ((n + 2 * (list[0] as IpcaEntry).layer.k + 1) * d)));
      for (let i = 0; i < list.length; i += per) chunks.push(list.slice(i, i + per));
    }
    await Promise.all(chunks.map((c) => this.updateStack(c)));
  }

  /** PEFT's arithmetic in float64 (linalg's IncrementalPCA, matched to PEFT's). */
  private async updateReference({ layer, x }: IpcaEntry): Promise<void> {
    const pca = layer.referencePca();
    await pca.partialFit(x);
    const comps = pca.components;
    if (!comps) return;
    layer.nSeen = pca.nSamplesSeen;
    layer.mean = pca.mean;
    layer.variance = pca.var;
    layer.singularValues = pca.singularValues;
    layer.explainedVarianceRatio = pca.explainedVarianceRatio;
    layer.updates++;
    // linalg keeps float64 rows: compared at full precision, as PEFT does
    layer.setComponents(Float64Array.from(comps.data), comps.cols, null, this.tau);
  }

  /** One stacked update of layers whose inputs and component counts have the same shape. */
  private async updateStack(entries: IpcaEntry[]): Promise<void> {
    const L = entries.length;
    const first = entries[0] as IpcaEntry;
    const [n, d] = first.x.shape;
    const { k, q } = first.layer;
    const isFirst = first.layer.nSeen === 0;
    // batch statistics on the backend: column sums, and the centred batch's sums and sums of squares
    // (the sums of the centred values put back what float32 rounding of the mean lost, as PEFT's
    // `correction` does in float64)
    // on wasm the layers stay separate matrices (see perMatrix): its slices and batched products are slow
    const separate = perMatrix();
    const { centred, stats, colSums } = tf.tidy(() => {
      if (separate) {
        const parts = entries.map((e) => {
          const x = tf.cast(e.x, 'float32');
          const colSum = tf.sum(x, 0, true) as tf.Tensor2D;
          const c = tf.sub(x, tf.div(colSum, n)) as tf.Tensor2D;
          return { c, colSum, stats: tf.concat([colSum, tf.sum(c, 0, true), tf.sum(tf.square(c), 0, true)]) };
        });
        return {
          centred: parts.map((p) => p.c) as Stack,
          stats: tf.stack(parts.map((p) => p.stats)),
          colSums: parts.map((p) => p.colSum) as Stack,
        };
      }
      const X = tf.stack(entries.map((e) => tf.cast(e.x, 'float32'))) as tf.Tensor3D;
      // sums over the rows as products with a row of ones: a reduction over the middle axis of a stack
      // transposes it first (1 ms a sum on the H200 for the 123M benchmark's stacks)
      const ones = tf.ones([1, n]);
      const rowSum = (t: tf.Tensor) => tf.matMul(ones, t) as tf.Tensor3D;
      const colSum = rowSum(X);
      const c = tf.sub(X, tf.div(colSum, n));
      return {
        centred: c as Stack,
        stats: tf.concat([colSum, rowSum(c), rowSum(tf.square(c))], 1),
        colSums: colSum as Stack,
      };
    });
    // the statistics are read while the decomposition runs (no read-back of their own); the
    // mean-correction row PEFT appends, √(seen·n/total)·(last mean − batch mean), is formed on the backend
    // the matrix PEFT decomposes: the centred batch, under diag(S)·components and a mean-correction row
    let M: Stack;
    if (isFirst) {
      M = centred;
      disposeStack(colSums);
    } else {
      const sv = new Float32Array(L * k);
      const lastMeans = new Float32Array(L * d);
      const factors = new Float32Array(L);
      for (let l = 0; l < L; l++) {
        const layer = (entries[l] as IpcaEntry).layer;
        sv.set(Float32Array.from(layer.singularValues as Float64Array), l * k);
        lastMeans.set(Float32Array.from(layer.mean as Float64Array), l * d);
        factors[l] = Math.sqrt((layer.nSeen / (layer.nSeen + n)) * n);
      }
      M = tf.tidy(() => {
        if (Array.isArray(centred)) {
          const sums = colSums as tf.Tensor2D[];
          return entries.map((e, l) =>
            tf.concat([
              tf.mul(e.layer.componentsTensor as tf.Tensor2D, tf.tensor2d(sv.subarray(l * k, (l + 1) * k), [k, 1])),
              centred[l] as tf.Tensor2D,
              tf.mul(
                factors[l] as number,
                tf.sub(tf.tensor2d(lastMeans.subarray(l * d, (l + 1) * d), [1, d]), tf.div(sums[l] as tf.Tensor2D, n)),
              ),
            ]),
          ) as tf.Tensor2D[];
        }
        const prev = tf.stack(entries.map((e) => e.layer.componentsTensor as tf.Tensor2D));
        const scaled = tf.mul(prev, tf.tensor3d(sv, [L, k, 1]));
        const correction = tf.mul(
          tf.tensor3d(factors, [L, 1, 1]),
          tf.sub(tf.tensor3d(lastMeans, [L, 1, d]), tf.div(colSums as tf.Tensor3D, n)),
        );
        return tf.concat([scaled, centred, correction], 1) as tf.Tensor3D;
      });
      disposeStack(centred);
      disposeStack(colSums);
    }
    const m = stackShape(M)[1];
    if (this.onBackend && !Array.isArray(M) && q < Math.min(m, d)) {
      const sketch = this.sketches.get(Math.min(m, d), q, isFirst ? 'float32' : 'float64');
      const prev = isFirst ? null : entries.map((e) => e.layer.componentsTensor as tf.Tensor2D);
      const { flipped, report } = tf.tidy(() => {
        const { S, Vt } = svdLowRankOnBackend(M as tf.Tensor3D, { q, niter: NITER, k, sketch });
        const out = flipAndCompare(Vt, prev);
        // one read: the batch statistics, the singular values and the cosines with the previous components
        const parts = [tf.reshape(stats, [-1]), tf.reshape(S, [-1])];
        if (out.cosines) parts.push(tf.reshape(out.cosines, [-1]));
        return { flipped: out.flipped, report: tf.concat(parts) };
      });
      disposeStack(M);
      stats.dispose();
      let values: Float32Array;
      try {
        values = (await report.data()) as Float32Array;
      } catch (e) {
        tf.dispose(flipped);
        throw e;
      } finally {
        report.dispose();
      }
      const perLayer = tf.tidy(() => tf.unstack(flipped) as tf.Tensor2D[]);
      flipped.dispose();
      const sOffset = L * 3 * d;
      const cOffset = sOffset + L * q;
      this.commit(
        entries,
        n,
        d,
        isFirst,
        values,
        (l) => Float64Array.from(values.subarray(sOffset + l * q, sOffset + (l + 1) * q)),
        (l, layer) =>
          layer.setComponentsOnBackend(
            perLayer[l] as tf.Tensor2D,
            isFirst ? null : values.subarray(cOffset + l * k, cOffset + (l + 1) * k),
            this.tau,
          ),
      );
      return;
    }
    const statsRead = stats.data().finally(() => stats.dispose());
    statsRead.catch(() => {}); // awaited below; a failure of the decomposition first must not leave it unhandled
    let result: Awaited<ReturnType<typeof svdExactBatched>>;
    try {
      if (q >= Math.min(m, d)) result = await svdExactBatched(M, k);
      else {
        const tall = m >= d;
        const sketch = this.sketches.get(tall ? d : m, q, isFirst ? 'float32' : 'float64');
        result = await svdLowRankBatched(M, { q, niter: NITER, k, sketch });
      }
    } finally {
      disposeStack(M);
    }
    const [rows, st] = await Promise.all([stackValuesOf(result.Vt), statsRead]);
    const flipped = new Float32Array(rows);
    const signs = new Float32Array(L * k);
    for (let l = 0; l < L; l++) {
      const mine = flipped.subarray(l * k * d, (l + 1) * k * d);
      signs.set(flipRows(mine, k, d), l * k);
    }
    const Vt = result.Vt;
    const perLayer = tf.tidy(() =>
      Array.isArray(Vt)
        ? Vt.map((v, l) => tf.mul(v, tf.tensor2d(signs.subarray(l * k, (l + 1) * k), [k, 1])) as tf.Tensor2D)
        : (tf.unstack(tf.mul(Vt, tf.tensor3d(signs, [L, k, 1]))) as tf.Tensor2D[]),
    );
    disposeStack(Vt);
    this.commit(
      entries,
      n,
      d,
      isFirst,
      st as Float32Array,
      (l) => result.S[l] as Float64Array,
      (l, layer) =>
        layer.setComponents(flipped.slice(l * k * d, (l + 1) * k * d), d, perLayer[l] as tf.Tensor2D, this.tau),
    );
  }

  /**
   * The host side of an update: running mean and variance in float64 from the batch statistics `st`
   * ([L, 3, d]: column sums, sums and sums of squares of the centred batch), singular values and
   * explained variance, then the components by `setComponents`.
   */
  private commit(
    entries: IpcaEntry[],
    n: number,
    d: number,
    isFirst: boolean,
    st: Float32Array,
    singular: (l: number) => Float64Array,
    setComponents: (l: number, layer: LayerPca) => void,
  ): void {
    const L = entries.length;
    const k = (entries[0] as IpcaEntry).layer.k;
    for (let l = 0; l < L; l++) {
      const layer = (entries[l] as IpcaEntry).layer;
      const seen = layer.nSeen;
      const total = seen + n;
      const mean = new Float64Array(d);
      const variance = new Float64Array(d);
      for (let j = 0; j < d; j++) {
        const newSum = st[(l * 3 + 0) * d + j] as number;
        const corr = st[(l * 3 + 1) * d + j] as number;
        const newUnnormalized = (st[(l * 3 + 2) * d + j] as number) - (corr * corr) / n;
        if (isFirst) {
          mean[j] = newSum / total;
          variance[j] = newUnnormalized / total;
        } else {
          const lastMean = (layer.mean as Float64Array)[j] as number;
          const lastMeanTimesSeen = lastMean * seen;
          const lastOverNew = seen / n;
          mean[j] = (lastMeanTimesSeen + newSum) / total;
          variance[j] =
            (((layer.variance as Float64Array)[j] as number) * seen +
              newUnnormalized +
              (lastOverNew / total) * (lastMeanTimesSeen / lastOverNew - newSum) ** 2) /
            total;
        }
      }
      const S = singular(l);
      let totalSquares = 0;
      for (const v of variance) totalSquares += v * total;
      layer.nSeen = total;
      layer.mean = mean;
      layer.variance = variance;
      layer.singularValues = S.slice(0, k);
      layer.explainedVarianceRatio = S.slice(0, k).map((v) => (v * v) / totalSquares);
      layer.updates++;
      setComponents(l, layer);
    }
  }

  dispose(): void {
    this.sketches.dispose();
  }
}
