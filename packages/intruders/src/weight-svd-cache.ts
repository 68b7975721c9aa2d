import * as tf from '@tensorflow/tfjs-core';
import { svd } from '@lora/linalg';
import type { MatrixAnalysis } from './reduce-matrix';

/** The thin SVD of a base weight's matrix: W = U·diag(S)·Vh, U m×k and Vh k×n on the backend, k = min(m, n). */
export interface WeightSvd {
  U: tf.Tensor2D;
  S: Float64Array;
  Vh: tf.Tensor2D;
}

interface AnalysisEntry {
  versions: readonly (object | string)[];
  topK: number;
  value: Promise<MatrixAnalysis>;
}

interface Entry {
  /** The tensor data the SVD was taken of (a variable gets new data on every `assign`), or null for a content key. */
  version: object | null;
  value: Promise<WeightSvd>;
}

/**
 * Base weights' SVDs kept between calls of {@link reduceIntruderDimension} and
 * {@link reduceIntruderTensors}: the one full decomposition intruder reduction needs per weight
 * (O(m·n·min(m, n)); everything else is low-rank), so that trying several `mitigationLambda`,
 * `thresholdEpsilon` or `topK` values, or several adapters on one base, pays for it once. A model's
 * weight is known by its variable and stays valid until the variable is assigned new values; a weight
 * read from a file is known by a hash of its values. Holds U and Vh (about twice the weight) on the
 * backend per entry until {@link dispose}. It also keeps, per layer and adapter, W + ΔW's leading
 * directions (a few vectors: they do not depend on the threshold or λ), so a sweep costs one
 * analysis per layer.
 *
 * @example
 * ```ts
 * const svdCache = new WeightSvdCache();
 * for (const mitigationLambda of [0, 0.5, 1]) {
 *   await reduceIntruderDimension(peft, { mitigationLambda, newAdapterName: `reduced_${mitigationLambda}`, svdCache });
 * }
 * svdCache.dispose();
 * ```
 */
export class WeightSvdCache {
  private readonly entries = new Map<string, Entry>();
  /** Per layer, one entry per set of factors seen (several adapters on one base do not evict each other). */
  private readonly analyses = new Map<string, AnalysisEntry[]>();
  /** Per tall weight, the largest certified lower bound on λ_min(WᵀW). */
  private readonly floors = new Map<string, { version: object | null; floor: number }>();
  /** Lookups answered from the cache, and decompositions computed (for tests and logs). */
  readonly stats = { hits: 0, computed: 0, analysisHits: 0, analysesComputed: 0 };

  /** Entries held. */
  get size(): number {
    return this.entries.size;
  }

  /**
   * A certified lower bound on λ_min(WᵀW) for a tall weight (0: none yet), kept so that later
   * adapters on the same base skip the Cholesky factorisation that certifies it. @internal
   */
  floorOf(key: string, version: object | null): number {
    const found = this.floors.get(key);
    return found && found.version === version ? found.floor : 0;
  }

  /** Records a certified floor (the largest one is kept). @internal */
  recordFloor(key: string, version: object | null, floor: number): void {
    if (floor > this.floorOf(key, version)) this.floors.set(key, { version, floor });
  }

  /** Whether the SVD for `key` at `version` is held (or being computed). @internal */
  has(key: string, version: object | null): boolean {
    const found = this.entries.get(key);
    return !!found && found.version === version;
  }

  /**
   * The SVD of `matrix` (a 2-d view of the weight), computed on the first call for `key` and reused
   * while `version` stays the same object. The cache owns what it returns.
   * @internal
   */
  async svdOf(key: string, version: object | null, matrix: () => tf.Tensor2D): Promise<WeightSvd> {
    const found = this.entries.get(key);
    if (found && found.version === version) {
      this.stats.hits++;
      return found.value;
    }
    if (found) this.evict(key, found);
    const value = computeWeightSvd(matrix());
    this.stats.computed++;
    this.entries.set(key, { version, value });
    value.catch(() => {
      if (this.entries.get(key)?.value === value) this.entries.delete(key);
    });
    return value;
  }

  /**
   * The leading directions of W + ΔW for one layer and adapter (what does not depend on the threshold
   * or λ), reused while every object or string in `versions` (the weight's and the factors' data, or
   * their hashes) is the same, `topK` is no larger than before and `usable` accepts it (an analysis
   * with bounds for the cosines decides only thresholds above them).
   * @internal
   */
  async analysisOf(
    key: string,
    versions: readonly (object | string)[],
    topK: number,
    compute: () => Promise<MatrixAnalysis>,
    usable: (analysis: MatrixAnalysis) => boolean = () => true,
  ): Promise<MatrixAnalysis> {
    const same = (e: AnalysisEntry) =>
      e.versions.length === versions.length && e.versions.every((v, i) => v === versions[i]);
    const held = this.analyses.get(key) ?? [];
    const found = held.find((e) => same(e) && e.topK >= topK);
    if (found) {
      const value = await found.value.catch(() => null);
      if (value && usable(value)) {
        this.stats.analysisHits++;
        return value;
      }
    }
    const value = compute();
    this.stats.analysesComputed++;
    const entry = { versions, topK, value };
    // the entry for these factors is replaced (a larger topK); another adapter's entries stay
    this.analyses.set(key, [...held.filter((e) => !same(e)), entry]);
    value.catch(() => {
      const now = this.analyses.get(key);
      if (now)
        this.analyses.set(
          key,
          now.filter((e) => e !== entry),
        );
    });
    return value;
  }

  private evict(key: string, entry: Entry): void {
    this.entries.delete(key);
    entry.value.then(
      (s) => tf.dispose([s.U, s.Vh]),
      () => {},
    );
  }

  /** Frees every SVD held; the cache can be used again afterwards. */
  dispose(): void {
    for (const [key, entry] of [...this.entries]) this.evict(key, entry);
    this.analyses.clear();
    this.floors.clear();
  }
}

/** W's thin SVD (`@lora/linalg`'s `svd`); takes ownership of `matrix` and frees it. */
async function computeWeightSvd(matrix: tf.Tensor2D): Promise<WeightSvd> {
  try {
    const { U, S, Vh } = await svd(matrix);
    const values = Float64Array.from(await S.data());
    S.dispose();
    return { U, S: values, Vh };
  } finally {
    matrix.dispose();
  }
}

/**
 * A SHA-256 of a weight's values and shape (Web Crypto, in Node and browsers alike): how
 * {@link WeightSvdCache} knows a weight read from a file again.
 */
export async function contentKey(values: Float32Array, shape: readonly number[]): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest(
    'SHA-256',
    new Uint8Array(values.buffer as ArrayBuffer, values.byteOffset, values.byteLength),
  );
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `values:${shape.join('x')}:${hex}`;
}
