import * as tf from '@tensorflow/tfjs-core';
import { variableGrads } from './grad';
import type { Module, Parameter } from './module';
import { type Optimizer, clipGradNorm } from './optim';
import type { Schedule } from './schedule';

/** What callbacks and progress events receive. */
export interface TrainLogs {
  /** Optimizer steps taken so far. */
  step: number;
  epoch: number;
  /** Mean loss over the micro-batches of the last optimizer step. */
  loss: number;
  /** Learning rate used by the last step. */
  lr: number;
  /** Global gradient norm before clipping (when `maxGradNorm` is set). */
  gradNorm?: number;
  /** Steps planned, when known (`maxSteps`, or an array of batches). */
  totalSteps?: number;
  /** Milliseconds since training began. */
  elapsedMs?: number;
  /** Tokens per second over the run so far (when `countTokens` is given). */
  tokensPerSecond?: number;
  /** Estimated milliseconds to the last planned step (when `totalSteps` is known). */
  etaMs?: number;
}

/** Callbacks in the tfjs style; each may be async, and the loop awaits it. */
export interface TrainCallbacks {
  onTrainBegin?(): void | Promise<void>;
  onTrainEnd?(logs: TrainLogs): void | Promise<void>;
  onEpochBegin?(epoch: number): void | Promise<void>;
  onEpochEnd?(epoch: number, logs: TrainLogs): void | Promise<void>;
  /** After each optimizer step. */
  onStepEnd?(step: number, logs: TrainLogs): void | Promise<void>;
}

/** Batches: an array or other re-iterable, an async iterable, or a function giving a fresh one per epoch. */
export type BatchSource<B> = Iterable<B> | AsyncIterable<B> | (() => Iterable<B> | AsyncIterable<B>);

/** Options of {@link train}. */
export interface TrainOptions<B> {
  optimizer: Optimizer;
  /** The loss of one batch, as a scalar (called inside gradient computation; keep it pure). */
  loss: (batch: B) => tf.Scalar;
  /** The parameters to train. Default: the module's trainable parameters. Frozen ones are never updated. */
  parameters?: Parameter[];
  epochs?: number;
  /** Stop after this many optimizer steps. */
  maxSteps?: number;
  /** Micro-batches whose gradients are averaged into one optimizer step. Default 1. */
  gradientAccumulationSteps?: number;
  /** Clip the global gradient norm to this value before each step. */
  maxGradNorm?: number;
  /** Multiplies the optimizer's initial learning rate at each step (0-based step index). */
  schedule?: Schedule;
  callbacks?: TrainCallbacks | TrainCallbacks[];
  /** Stops the loop between micro-batches; the result says `'aborted'`. */
  signal?: AbortSignal;
  /**
   * Node only: the first Ctrl-C (SIGINT) stops the loop as `signal` does, after the running
   * micro-batch and without an optimizer step on a partial accumulation window; a second one exits
   * the process. Default false (Ctrl-C kills the process as usual).
   */
  stopOnInterrupt?: boolean;
  /** Tokens in a batch (e.g. `(b) => b.size` for a tensor of ids), for tokens/s in progress events. */
  countTokens?: (batch: B) => number;
  /** `'auto'` (default): a progress bar on a Node terminal; `false`: none. */
  progressBar?: boolean | 'auto';
  /** Progress events, wherever the loop runs (a browser UI, a worker). */
  onProgress?: (logs: TrainLogs) => void;
}

/** What {@link train} returns. */
export interface TrainResult {
  steps: number;
  epochs: number;
  /** Loss of each optimizer step. */
  losses: number[];
  stopped: 'completed' | 'maxSteps' | 'aborted';
}

/**
 * Gradients of `f` with respect to exactly `params`, frozen ones included (they are made trainable
 * for the duration of this call only). The extension point LoRA-GA needs: gradients of frozen base
 * weights. The caller owns the returned tensors.
 *
 * @example
 * ```ts
 * const { value, grads } = gradientsFor([layer.weight], () => loss(batch));
 * ```
 */
export function gradientsFor(
  params: Parameter[],
  f: () => tf.Scalar,
): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
  const was = params.map((p) => p.trainable);
  for (const p of params) p.trainable = true;
  try {
    return variableGrads(f, params);
  } finally {
    params.forEach((p, i) => {
      p.trainable = was[i] as boolean;
    });
  }
}

function isNodeTty(): boolean {
  const p = (globalThis as { process?: { stderr?: { isTTY?: boolean }; versions?: { node?: string } } }).process;
  return Boolean(p?.versions?.node && p.stderr?.isTTY);
}

/** `1h02m`, `3m07s`, `12s`. */
function duration(ms: number): string {
  const sec = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(sec / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const ss = sec % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  return m > 0 ? `${m}m${String(ss).padStart(2, '0')}s` : `${ss}s`;
}

function drawBar(logs: TrainLogs): void {
  const width = 30;
  const total = logs.totalSteps;
  const frac = total ? Math.min(1, logs.step / total) : 0;
  const bar = total
    ? `[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${logs.step}/${total}`
    : `step ${logs.step}`;
  const speed =
    logs.tokensPerSecond === undefined
      ? ''
      : ` ${logs.tokensPerSecond.toFixed(logs.tokensPerSecond < 10 ? 1 : 0)} tok/s`;
  const eta = logs.etaMs === undefined ? '' : ` ETA ${duration(logs.etaMs)}`;
  const text = `\r${bar} epoch ${logs.epoch} loss ${logs.loss.toFixed(4)} lr ${logs.lr.toExponential(2)}${speed}${eta}`;
  (globalThis as unknown as { process: { stderr: { write(s: string): void } } }).process.stderr.write(text);
}

interface NodeProcess {
  on(event: 'SIGINT', fn: () => void): void;
  off(event: 'SIGINT', fn: () => void): void;
  exit(code: number): never;
  stderr: { write(s: string): void };
}

/**
 * While training: the first SIGINT asks the loop to stop (it checks between micro-batches), the
 * second exits with the shell's code for an interrupt (130). Returns the function that removes it.
 */
function trapInterrupt(onFirst: () => void): () => void {
  const proc = (globalThis as { process?: NodeProcess & { versions?: { node?: string } } }).process;
  if (!proc?.versions?.node) return () => undefined;
  let count = 0;
  const handler = () => {
    count++;
    if (count > 1) proc.exit(130);
    proc.stderr.write('\ntrain: stopping after the running step (Ctrl-C again to quit now)\n');
    onFirst();
  };
  proc.on('SIGINT', handler);
  return () => proc.off('SIGINT', handler);
}

/**
 * Trains `module` over batches: per micro-batch, gradients of `loss` for the trainable parameters
 * only; averaged over `gradientAccumulationSteps`; optionally clipped; one optimizer step; callbacks
 * and progress after each. Between micro-batches it yields to the event loop and honours `signal`.
 * Every tensor it makes is freed.
 *
 * @example
 * ```ts
 * const opt = new AdamW(model.trainableParameters(), { lr: 1e-3 });
 * const result = await train(model, batches, {
 *   optimizer: opt, loss: (b) => crossEntropy(model.call(b.x), b.y) as tf.Scalar,
 *   epochs: 3, gradientAccumulationSteps: 2, maxGradNorm: 1,
 *   callbacks: { onStepEnd: (step, logs) => console.log(step, logs.loss) },
 * });
 * ```
 */
export async function train<B>(module: Module, data: BatchSource<B>, options: TrainOptions<B>): Promise<TrainResult> {
  const epochs = options.epochs ?? 1;
  const accumulate = options.gradientAccumulationSteps ?? 1;
  if (!Number.isInteger(epochs) || epochs < 1)
    throw new Error(`train: epochs must be a positive integer, got ${epochs}`);
  if (!Number.isInteger(accumulate) || accumulate < 1)
    throw new Error(`train: gradientAccumulationSteps must be a positive integer, got ${accumulate}`);
  const params = (options.parameters ?? module.trainableParameters()).filter((p) => p.trainable);
  if (params.length === 0)
    throw new Error('train: no trainable parameters; unfreeze some (requiresGrad) or pass options.parameters');
  const callbacks =
    options.callbacks === undefined ? [] : Array.isArray(options.callbacks) ? options.callbacks : [options.callbacks];
  const baseLr = options.optimizer.lr;
  const bar = options.progressBar === true || ((options.progressBar ?? 'auto') === 'auto' && isNodeTty());
  const perEpoch = typeof data !== 'function' && Array.isArray(data) ? Math.ceil(data.length / accumulate) : undefined;
  const totalSteps = options.maxSteps ?? (perEpoch === undefined ? undefined : perEpoch * epochs);
  const losses: number[] = [];
  let step = 0;
  let logs: TrainLogs = {
    step: 0,
    epoch: 0,
    loss: Number.NaN,
    lr: baseLr,
    ...(totalSteps === undefined ? {} : { totalSteps }),
  };
  let stopped: TrainResult['stopped'] = 'completed';
  let epoch = 0;
  const emit = async (fn: (c: TrainCallbacks) => void | Promise<void> | undefined) => {
    for (const c of callbacks) await fn(c);
  };

  let interrupted = false;
  const releaseInterrupt = options.stopOnInterrupt
    ? trapInterrupt(() => {
        interrupted = true;
      })
    : () => undefined;
  const started = performance.now();
  let tokens = 0;
  try {
    module.train();
    await emit((c) => c.onTrainBegin?.());
    // A generator or stream is used up after one pass: epochs beyond the first need a fresh one.
    if (epochs > 1 && typeof data !== 'function' && typeof (data as { next?: unknown }).next === 'function') {
      throw new Error(
        'train: these batches are a one-pass iterator; pass an array or a function returning a fresh iterable for several epochs',
      );
    }
    for (epoch = 0; epoch < epochs; epoch++) {
      const source = typeof data === 'function' ? data() : data;
      await emit((c) => c.onEpochBegin?.(epoch));
      let acc: Record<string, tf.Tensor> | null = null;
      let micro = 0;
      let lossSum = 0;
      const flush = async () => {
        if (!acc) return;
        let grads = acc;
        acc = null;
        let gradNorm: number | undefined;
        if (options.maxGradNorm !== undefined)
          ({ grads, totalNorm: gradNorm } = await clipGradNorm(grads, options.maxGradNorm));
        const lr = options.schedule ? baseLr * options.schedule(step) : baseLr;
        options.optimizer.lr = lr;
        options.optimizer.step(grads);
        tf.dispose(Object.values(grads));
        step++;
        const loss = lossSum / micro;
        losses.push(loss);
        logs = {
          step,
          epoch,
          loss,
          lr,
          ...(gradNorm === undefined ? {} : { gradNorm }),
          ...(totalSteps === undefined ? {} : { totalSteps }),
        };
        micro = 0;
        lossSum = 0;
        const elapsedMs = performance.now() - started;
        logs.elapsedMs = elapsedMs;
        if (options.countTokens) logs.tokensPerSecond = (tokens / elapsedMs) * 1000;
        if (totalSteps !== undefined) logs.etaMs = (elapsedMs / step) * Math.max(0, totalSteps - step);
        options.onProgress?.(logs);
        if (bar) drawBar(logs);
        await emit((c) => c.onStepEnd?.(step, logs));
      };
      for await (const batch of source as AsyncIterable<B>) {
        if (options.signal?.aborted || interrupted) {
          stopped = 'aborted';
          break;
        }
        if (options.countTokens) tokens += options.countTokens(batch);
        let computed: ReturnType<typeof variableGrads>;
        try {
          computed = variableGrads(() => options.loss(batch), params);
        } catch (e) {
          // a step that does not fit (WasmOutOfMemoryError) or fails: nothing of the window is kept
          if (acc) tf.dispose(Object.values(acc as Record<string, tf.Tensor>));
          throw e;
        }
        const { value, grads } = computed;
        const lossValue = (await value.data())[0] as number;
        value.dispose();
        if (!Number.isFinite(lossValue)) {
          tf.dispose(Object.values(grads));
          if (acc) tf.dispose(Object.values(acc as Record<string, tf.Tensor>));
          throw new Error(
            `train: the loss is ${lossValue} at step ${step} (epoch ${epoch}); lower the learning rate or check the data`,
          );
        }
        lossSum += lossValue;
        micro++;
        // Average over the accumulation window, as dividing each micro-batch loss by its size would.
        const scaled: Record<string, tf.Tensor> = {};
        for (const [k, g] of Object.entries(grads)) {
          scaled[k] = accumulate === 1 ? g : tf.tidy(() => tf.div(g, accumulate));
          if (accumulate !== 1) g.dispose();
        }
        if (!acc) acc = scaled;
        else {
          const prev: Record<string, tf.Tensor> = acc;
          for (const [k, g] of Object.entries(scaled)) {
            const sum = tf.add(prev[k] as tf.Tensor, g);
            (prev[k] as tf.Tensor).dispose();
            g.dispose();
            prev[k] = sum;
          }
        }
        if (micro === accumulate) await flush();
        if (options.maxSteps !== undefined && step >= options.maxSteps) {
          stopped = 'maxSteps';
          break;
        }
        await new Promise((r) => setTimeout(r, 0));
      }
      if (stopped === 'aborted') {
        if (acc) tf.dispose(Object.values(acc as Record<string, tf.Tensor>));
        break;
      }
      if (stopped !== 'maxSteps') await flush(); // a last, partial accumulation window
      await emit((c) => c.onEpochEnd?.(epoch, logs));
      if (stopped === 'maxSteps') break;
    }
    if (bar) (globalThis as unknown as { process: { stderr: { write(s: string): void } } }).process.stderr.write('\n');
    await emit((c) => c.onTrainEnd?.(logs));
  } finally {
    releaseInterrupt();
  }
  return { steps: step, epochs: Math.min(epoch + (stopped === 'completed' ? 0 : 1), epochs), losses, stopped };
}

/**
 * A callback that hands the module's trainable state to `save` every `everySteps` steps (and at the
 * end). In Node, save with `@lora/tensor/node`'s `saveSafetensors`.
 *
 * @example
 * ```ts
 * callbacks: [checkpointCallback(model, { everySteps: 100, save: (step, sd) => saveSafetensors(`ckpt-${step}.safetensors`, sd) })]
 * ```
 */
export function checkpointCallback(
  module: Module,
  o: {
    everySteps: number;
    save: (step: number, stateDict: Record<string, tf.Tensor>) => void | Promise<void>;
    trainableOnly?: boolean;
  },
): TrainCallbacks {
  if (!Number.isInteger(o.everySteps) || o.everySteps < 1)
    throw new Error(`checkpointCallback: everySteps must be a positive integer, got ${o.everySteps}`);
  let last = -1;
  const state = () => {
    const sd = module.stateDict();
    if (!(o.trainableOnly ?? true)) return sd;
    const trainable = new Set(module.trainableParameters());
    return Object.fromEntries(Object.entries(sd).filter(([, t]) => trainable.has(t as tf.Variable)));
  };
  return {
    onStepEnd: async (step) => {
      if (step % o.everySteps === 0) {
        last = step;
        await o.save(step, state());
      }
    },
    onTrainEnd: async (logs) => {
      if (logs.step !== last && logs.step > 0) await o.save(logs.step, state());
    },
  };
}
