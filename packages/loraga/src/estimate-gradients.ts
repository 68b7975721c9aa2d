import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, type LoraConfigFields, checkLoraConfig, loraConfig } from '@lora/core';
import { type Module, type Parameter, gradientsFor, storedWeightRefusal } from '@lora/nn';
import { type StoredGradient, disposeStored } from './gradient-store';
import { type LoraGaTarget, loraGaTargets } from './targets';

/**
 * One forward and backward pass: `loss` computes the loss of a batch (synchronously, inside gradient
 * recording), and the gradients of the target weights are added to their running sums; nothing else
 * is kept. Resolves to the loss's value.
 */
export type LoraGaBackward = (loss: () => tf.Scalar) => Promise<number>;

/** The user's loop over the estimation batches: it calls `backward` once per batch (PEFT's `train_step`). */
export type LoraGaTrainStep = (backward: LoraGaBackward) => void | Promise<void>;

/** Options of {@link estimateGradients}. */
export interface EstimateGradientsOptions {
  /**
   * Keep the running sums in host memory instead of on the backend (default false): after each
   * backward pass, each layer's gradient is read back, added and freed before the next layer's, so the
   * backend holds the model, one pass's activations and gradients, and never a second copy of the
   * target weights.
   */
  offload?: boolean;
  /** Stops the estimation at the next backward pass (it rejects with the signal's reason, freeing everything). */
  signal?: AbortSignal;
  /**
   * How many target weights one forward/backward pass differentiates (default: all of them). With fewer,
   * `backward(loss)` runs the loss once per group of this many targets: the backend then holds one
   * group's gradients at a time instead of a gradient of every target, for a forward and backward pass
   * per group (use a deterministic loss: dropout draws differ from pass to pass).
   */
  targetsPerPass?: number;
  /** Called after each backward pass. */
  onProgress?: (progress: { passes: number; loss: number }) => void;
  /** Receives the warning about targets no gradient reached (default `console.warn`). */
  warn?: (message: string) => void;
}

/** A complete config from what `getPeftModel` accepts. */
export function asLoraConfig(config: LoraConfig | LoraConfigFields): LoraConfig {
  return 'peftType' in config && config.peftType === 'LORA' && 'extra' in config
    ? checkLoraConfig(config as LoraConfig)
    : loraConfig(config);
}

/** What the accumulation gives: each target's mean gradient (or none) and the backward passes run. */
export interface AccumulatedGradients {
  targets: LoraGaTarget[];
  gradients: Map<string, StoredGradient>;
  /** Backward passes through each target (0: no gradient reached it). */
  counts: Map<string, number>;
  passes: number;
}

interface Sum {
  target: LoraGaTarget;
  /** Backward passes through the module, as PEFT's backward hook counts them (k a batch for a module used k times). */
  count: number;
  tensor?: tf.Tensor2D;
  values?: Float32Array;
}

/**
 * The accumulation behind {@link estimateGradients} and `preprocessLoraga`: gradients stay in the
 * form they were accumulated in (host memory when offloaded).
 */
export async function accumulateGradients(
  model: Module,
  config: LoraConfig,
  trainStep: LoraGaTrainStep,
  options: EstimateGradientsOptions = {},
): Promise<AccumulatedGradients> {
  const targets = loraGaTargets(model, config);
  for (const { path, module } of targets) {
    const refused = storedWeightRefusal(module, `LoRA-GA's gradient estimate on '${path}'`);
    if (refused) throw new Error(refused);
  }
  const offload = options.offload ?? false;
  const sums = targets.map((target): Sum => ({ target, count: 0 }));
  // a weight shared by several targets (tied) is differentiated once
  const weights = [...new Set(targets.map((t) => t.module.weight))];
  const calls = new Map<Module, number>();
  let recording = false;
  const hooks = targets.map(({ module }) =>
    module.registerForwardHook((m) => {
      if (recording) calls.set(m, (calls.get(m) ?? 0) + 1);
      return undefined;
    }),
  );
  const wasTraining = model.training;
  model.train();
  let passes = 0;
  let running: Promise<number> | null = null;

  // the weights whose gradients one forward/backward pass computes: all of them, or groups of targetsPerPass
  const per = options.targetsPerPass ?? weights.length;
  if (!Number.isInteger(per) || per < 1)
    throw new RangeError(`LoRA-GA: targetsPerPass must be a positive integer, got ${per}`);
  const groups: Parameter[][] = [];
  for (let i = 0; i < weights.length; i += per) groups.push(weights.slice(i, i + per) as Parameter[]);

  /** One forward/backward pass for one group of weights: their gradients summed into their layers' sums. */
  const groupPass = async (lossFn: () => tf.Scalar, group: Parameter[]): Promise<tf.Scalar> => {
    calls.clear();
    recording = true;
    let value: tf.Scalar;
    let grads: Record<string, tf.Tensor>;
    try {
      ({ value, grads } = gradientsFor(group, lossFn));
    } finally {
      recording = false;
    }
    try {
      const inGroup = new Set(group);
      const mine = sums.filter((s) => inGroup.has(s.target.module.weight));
      // users left of each weight's gradient (a tied weight serves several targets)
      const users = new Map<string, number>();
      for (const s of mine) users.set(s.target.module.weight.name, (users.get(s.target.module.weight.name) ?? 0) + 1);
      for (const s of mine) {
        const name = s.target.module.weight.name;
        const g = grads[name] as tf.Tensor2D | undefined;
        if (!g) continue;
        s.count += Math.max(1, calls.get(s.target.module) ?? 0);
        const left = (users.get(name) as number) - 1;
        users.set(name, left);
        let taken = false;
        if (offload) {
          const v = (await g.data()) as Float32Array;
          const sum = s.values;
          if (sum) for (let i = 0; i < v.length; i++) sum[i] = (sum[i] as number) + (v[i] as number);
          else s.values = v.slice();
        } else if (s.tensor) {
          const next = tf.add(s.tensor, g) as tf.Tensor2D;
          s.tensor.dispose();
          s.tensor = next;
        } else if (left === 0) {
          s.tensor = g; // the first pass's gradient becomes the sum
          taken = true;
        } else s.tensor = tf.clone(g);
        // each layer's gradient is freed once summed, so that the sums grow a layer at a time
        if (left === 0) {
          if (!taken) g.dispose();
          delete grads[name];
        }
      }
      return value;
    } catch (e) {
      value.dispose();
      throw e;
    } finally {
      tf.dispose(Object.values(grads));
    }
  };

  const pass = async (lossFn: () => tf.Scalar): Promise<number> => {
    options.signal?.throwIfAborted();
    if (typeof lossFn !== 'function')
      throw new TypeError(
        `LoRA-GA: backward(loss) takes a function that returns the batch's loss, got ${typeof lossFn}: backward(() => model.forward(batch).loss)`,
      );
    let loss = Number.NaN;
    for (const [i, group] of groups.entries()) {
      if (i > 0) options.signal?.throwIfAborted();
      const value = await groupPass(lossFn, group);
      try {
        if (i === 0) loss = (await value.data())[0] as number;
      } finally {
        value.dispose();
      }
    }
    passes++;
    return loss;
  };

  const backward: LoraGaBackward = (lossFn) => {
    if (running)
      return Promise.reject(
        new Error('LoRA-GA: backward(loss) was called again before the previous call resolved; await each call'),
      );
    running = pass(lossFn)
      .then((loss) => {
        options.onProgress?.({ passes, loss });
        return loss;
      })
      .finally(() => {
        running = null;
      });
    return running;
  };

  try {
    await trainStep(backward);
    if (running) await running;
  } catch (e) {
    for (const s of sums) s.tensor?.dispose();
    throw e;
  } finally {
    for (const h of hooks) h.remove();
    if (!wasTraining) model.eval();
  }
  if (passes === 0) {
    throw new Error(
      'LoRA-GA: trainStep never called backward(loss): call it once per batch, e.g. async (backward) => { for (const b of batches) await backward(() => lossOf(b)); }',
    );
  }
  const gradients = new Map<string, StoredGradient>();
  const counts = new Map(sums.map((s) => [s.target.path, s.count]));
  const missing: string[] = [];
  for (const s of sums) {
    const [rows, cols] = s.target.module.weight.shape as [number, number];
    if (s.count === 0) {
      missing.push(s.target.path);
      continue;
    }
    if (s.values) {
      const v = s.values;
      for (let i = 0; i < v.length; i++) v[i] = (v[i] as number) / s.count;
      gradients.set(s.target.path, { shape: [rows, cols], values: v });
    } else {
      const mean = tf.div(s.tensor as tf.Tensor2D, s.count) as tf.Tensor2D;
      (s.tensor as tf.Tensor2D).dispose();
      gradients.set(s.target.path, { shape: [rows, cols], tensor: mean });
    }
  }
  if (missing.length)
    (options.warn ?? console.warn)(
      `LoRA-GA: no gradient reached ${missing.join(', ')} in ${passes} backward pass(es); getPeftModel gives ${missing.length === 1 ? 'it' : 'them'} the default LoRA init`,
    );
  return { targets, gradients, counts, passes };
}

/**
 * Estimates the mean gradient of every LoRA-GA target weight (PEFT 0.21's `estimate_gradients`): the
 * Linear and TransposedLinear layers the config targets (Embedding and convolution targets are left
 * out), in the weight's stored layout (`[out, in]`; `[in, out]` for a TransposedLinear). `trainStep`
 * is your loop over the batches; each `backward(lossFn)` runs one forward and backward pass and adds
 * the target weights' gradients (frozen weights included; no other gradient is computed), and the
 * mean divides each sum by the backward passes through that layer, as PEFT's hook count. The model
 * is in training mode meanwhile (dropout on), as in PEFT, and back in its mode after.
 *
 * Returns new tensors, which the caller owns. With `offload: true` the sums live in host memory
 * during the estimation, and the returned tensors are made from host arrays: on webgpu and webgl
 * they stay in host memory until first used.
 *
 * @example
 * ```ts
 * const grads = await estimateGradients(model, config, async (backward) => {
 *   for (const b of batches) await backward(() => model.forward(b, { labels: b }).loss);
 * });
 * grads.get('model.layers.0.self_attn.q_proj'); // [out, in]
 * tf.dispose([...grads.values()]);
 * ```
 */
export async function estimateGradients(
  model: Module,
  config: LoraConfig | LoraConfigFields,
  trainStep: LoraGaTrainStep,
  options: EstimateGradientsOptions = {},
): Promise<Map<string, tf.Tensor2D>> {
  const { gradients } = await accumulateGradients(model, asLoraConfig(config), trainStep, options);
  const out = new Map<string, tf.Tensor2D>();
  for (const [path, g] of gradients) {
    if (g.tensor) out.set(path, g.tensor);
    else out.set(path, tf.tensor2d(g.values, g.shape));
  }
  return out;
}

export { disposeStored };
