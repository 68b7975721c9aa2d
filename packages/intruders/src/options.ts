import * as tf from '@tensorflow/tfjs-core';
import { IntruderReductionError } from './errors';
import type { WeightSvdCache } from './weight-svd-cache';

/** The settings PEFT's `reduce_intruder_dimension` takes, shared by the model and the files entry points. */
export interface IntruderSettings {
  /**
   * How many of W + ΔW's leading left singular vectors are examined (PEFT's `top_k`, default 10).
   */
  topK?: number;
  /**
   * A leading singular vector of W + ΔW whose largest |cosine| with W's left singular vectors is
   * below this is an intruder (PEFT's `threshold_epsilon`, default 0.5).
   */
  thresholdEpsilon?: number;
  /**
   * The fraction of each intruder direction kept: its singular value σ becomes λ·σ (PEFT's
   * `mitigation_lambda`, default 0.75; 0 removes it, 1 changes nothing).
   */
  mitigationLambda?: number;
  /**
   * Receives PEFT's lines: `<module>: Intruders: N` or `<module>: No intruders` for each LoRA layer,
   * then `Enabling new adapter <name>`. Default `console.log` (PEFT prints); `null` silences.
   */
  loggingSink?: ((line: string) => void) | null;
  /**
   * Keeps each base weight's SVD for later calls (a sweep over `mitigationLambda` pays for it once).
   * Without one, the SVDs are freed when the call returns.
   */
  svdCache?: WeightSvdCache;
  /**
   * Report every cosine exactly (default false). Without it, a layer whose leading directions are
   * all provably intruders (a tall one also needs its floor on λ_min(WᵀW) certified) is decided
   * without W's SVD and reports upper bounds for
   * their cosines (`cosineBound` in the layer's report); the intruders and the new factors are the
   * same either way.
   */
  exactCosines?: boolean;
  /**
   * Whether to try that certificate before W's SVD (default: on a GPU backend, not on `cpu` or
   * `wasm`). It replaces W's SVD with a few dozen products with the m×n W + ΔW and Wᵀ: nearly free on a
   * GPU, but on a CPU backend each costs O(m·n) of host time and the one SVD of W, kept by
   * `svdCache` for later calls, is cheaper. The intruders and the new factors are the same either way.
   */
  certify?: boolean;
  /**
   * How many layers are analysed at once (default: 4 on a GPU backend, 1 on `cpu` and `wasm`). On a
   * GPU a layer's work waits on read-backs (the subspace iteration and the Lanczos steps read a few
   * numbers each); other layers' work fills those waits. The results, PEFT's log lines and
   * `onProgress` calls come in layer order whatever the value; each layer in flight holds its W + ΔW
   * (m·n floats) on the backend.
   */
  concurrency?: number;
  /** Stops the work between layers (the promise rejects with the signal's reason; nothing is changed). */
  signal?: AbortSignal;
  /** Called after each layer: how many are done, of how many, and the one just done. */
  onProgress?: (done: number, total: number, path: string) => void;
}

/** {@link IntruderSettings} with PEFT's defaults filled in and checked. */
export interface ResolvedSettings {
  topK: number;
  thresholdEpsilon: number;
  mitigationLambda: number;
  exactCosines: boolean;
  /** {@link IntruderSettings.certify}, with its default for the backend active when the call began. */
  certify: boolean;
  concurrency: number;
  log: (line: string) => void;
}

/** Whether the active backend computes on the host (`cpu`, `wasm`), where products with W cost O(m·n) of host time. */
export function onCpuBackend(): boolean {
  return ['cpu', 'wasm'].includes(tf.getBackend());
}

/** PEFT's defaults and our checks: a clear error naming the value, before any work. */
export function resolveSettings(options: IntruderSettings): ResolvedSettings {
  const {
    topK = 10,
    thresholdEpsilon = 0.5,
    mitigationLambda = 0.75,
    loggingSink,
    exactCosines = false,
    certify = !onCpuBackend(),
    concurrency = onCpuBackend() ? 1 : 4,
  } = options;
  if (!Number.isInteger(topK) || topK < 1)
    throw new IntruderReductionError(
      `topK ${JSON.stringify(topK)} is not a positive integer; it is how many leading singular vectors are examined (PEFT's default is 10)`,
    );
  if (typeof thresholdEpsilon !== 'number' || !Number.isFinite(thresholdEpsilon))
    throw new IntruderReductionError(
      `thresholdEpsilon ${JSON.stringify(thresholdEpsilon)} is not a finite number; it is the cosine below which a direction is an intruder (PEFT's default is 0.5)`,
    );
  if (typeof mitigationLambda !== 'number' || !Number.isFinite(mitigationLambda))
    throw new IntruderReductionError(
      `mitigationLambda ${JSON.stringify(mitigationLambda)} is not a finite number; it is the fraction of each intruder direction kept (0 removes it, PEFT's default is 0.75)`,
    );
  if (loggingSink !== undefined && loggingSink !== null && typeof loggingSink !== 'function')
    throw new IntruderReductionError('loggingSink must be a function taking one line, or null to silence it');
  const log = loggingSink === null ? () => {} : (loggingSink ?? ((line: string) => console.log(line)));
  if (typeof exactCosines !== 'boolean')
    throw new IntruderReductionError(`exactCosines ${JSON.stringify(exactCosines)} must be true or false`);
  if (typeof certify !== 'boolean')
    throw new IntruderReductionError(`certify ${JSON.stringify(certify)} must be true or false`);
  if (!Number.isInteger(concurrency) || concurrency < 1)
    throw new IntruderReductionError(
      `concurrency ${JSON.stringify(concurrency)} is not a positive integer; it is how many layers are analysed at once (1 analyses them one by one)`,
    );
  return { topK, thresholdEpsilon, mitigationLambda, exactCosines, certify, concurrency, log };
}

/** Rejects with the signal's reason when it has fired. */
export function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new Error('aborted');
}
