/**
 * The convergence experiment: the same LoRA (r, α, targets, optimizer, schedule, batches) started from
 * PEFT's default init and from LoRA-GA's, trained side by side; training loss per step and held-out
 * loss every few steps, for several seeds; and how many steps each takes to reach the loss default
 * LoRA ends at.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type PeftModel, getPeftModel } from '@lora/core';
import { preprocessLoraga } from '@lora/loraga';
import { LlamaForCausalLM } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator } from '@lora/tensor';

export type Method = 'lora' | 'lora_ga';

export interface ConvergenceOptions {
  /** A Hugging Face Llama checkpoint folder. */
  modelDir: string;
  /** Tokenised training and held-out entries. */
  train: number[][];
  heldout: number[][];
  steps: number;
  batchSize: number;
  lr: number;
  r: number;
  loraAlpha: number;
  targetModules: string[];
  /** Batches of the training data LoRA-GA estimates its gradients on. */
  gradientBatches: number;
  seeds: number[];
  /** Held-out loss every this many steps (and at step 0). */
  evalEvery: number;
  log?: (line: string) => void;
}

export interface Run {
  method: Method;
  seed: number;
  lr: number;
  /** Training loss of each step (1-based steps: losses[0] is step 1). */
  losses: number[];
  /** [step, held-out loss]. */
  heldout: Array<[number, number]>;
  /** Seconds in preprocessLoraga + getPeftModel (LoRA-GA) or getPeftModel (default). */
  initSeconds: number;
  trainSeconds: number;
}

interface Batch {
  x: tf.Tensor2D;
  labels: tf.Tensor2D;
}

/** Right-padded batch: inputs padded with token 0, labels with -100 (ignored by the loss). */
function padBatch(docs: number[][]): Batch {
  const len = Math.max(...docs.map((d) => d.length));
  const ids = docs.map((d) => [...d, ...Array(len - d.length).fill(0)]);
  const labels = docs.map((d) => [...d, ...Array(len - d.length).fill(-100)]);
  return { x: tf.tensor2d(ids, [docs.length, len], 'int32'), labels: tf.tensor2d(labels, [docs.length, len], 'int32') };
}

/** The entries in a seeded order, cut into batches (the same order for both methods of a seed). */
function order(n: number, seed: number): number[] {
  const g = new Generator(seed);
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = g.nextUint32() % (i + 1);
    [idx[i], idx[j]] = [idx[j] as number, idx[i] as number];
  }
  return idx;
}

function stepBatches(docs: number[][], steps: number, size: number, seed: number): number[][][] {
  const out: number[][][] = [];
  let epoch = 0;
  let idx = order(docs.length, seed * 1000 + epoch);
  let at = 0;
  while (out.length < steps) {
    if (at + size > idx.length) {
      idx = order(docs.length, seed * 1000 + ++epoch);
      at = 0;
    }
    out.push(idx.slice(at, at + size).map((i) => docs[i] as number[]));
    at += size;
  }
  return out;
}

/** Mean loss over the held-out entries (token-weighted), in batches. */
async function heldoutLoss(model: { call: (...a: unknown[]) => unknown }, docs: number[][], size: number) {
  let sum = 0;
  let count = 0;
  for (let i = 0; i < docs.length; i += size) {
    const chunk = docs.slice(i, i + size);
    const b = padBatch(chunk);
    const { loss, logits } = model.call(b.x, { labels: b.labels }) as { loss: tf.Scalar; logits: tf.Tensor };
    const tokens = chunk.reduce((n, d) => n + d.length - 1, 0);
    sum += ((await loss.data())[0] as number) * tokens;
    count += tokens;
    tf.dispose([loss, logits, b.x, b.labels]);
  }
  return sum / count;
}

/** One training run of one method and seed. */
export async function runOne(o: ConvergenceOptions, method: Method, seed: number, lr = o.lr): Promise<Run> {
  const log = o.log ?? (() => {});
  const model = await LlamaForCausalLM.fromPretrained(o.modelDir);
  const config = {
    r: o.r,
    loraAlpha: o.loraAlpha,
    targetModules: o.targetModules,
    taskType: 'CAUSAL_LM' as const,
    initLoraWeights: method === 'lora_ga' ? ('lora_ga' as const) : true,
    loraGaConfig: method === 'lora_ga' ? {} : null,
  };
  const t0 = performance.now();
  if (method === 'lora_ga') {
    // the estimation batches: the first gradientBatches of this seed's training order
    const est = stepBatches(o.train, o.gradientBatches, o.batchSize, seed + 7919);
    await preprocessLoraga(model, config, async (backward) => {
      for (const docs of est) {
        const b = padBatch(docs);
        try {
          await backward(() => model.forward(b.x, { labels: b.labels }).loss as tf.Scalar);
        } finally {
          tf.dispose([b.x, b.labels]);
        }
      }
    });
  }
  manualSeed(seed);
  const peft: PeftModel = getPeftModel(model, config);
  await peft.initialized();
  const initSeconds = (performance.now() - t0) / 1000;
  const heldout: Array<[number, number]> = [];
  const evaluate = async (step: number) => {
    peft.eval();
    heldout.push([step, await heldoutLoss(peft, o.heldout, o.batchSize)]);
    peft.train();
  };
  await evaluate(0);
  const optimizer = new AdamW(peft.trainableParameters(), { lr, weightDecay: 0 });
  const plan = stepBatches(o.train, o.steps, o.batchSize, seed);
  const t1 = performance.now();
  // each batch is freed when the next one is made (and the last one after training)
  let current: Batch | null = null;
  const release = () => {
    if (current) tf.dispose([current.x, current.labels]);
    current = null;
  };
  const result = await train(
    peft,
    function* () {
      for (const docs of plan) {
        release();
        current = padBatch(docs);
        yield current;
      }
    },
    {
      optimizer,
      loss: (b: Batch) => model.forward(b.x, { labels: b.labels }).loss as tf.Scalar,
      maxSteps: o.steps,
      schedule: cosineWarmupSchedule({ warmupSteps: Math.min(5, o.steps - 1), totalSteps: o.steps }),
      maxGradNorm: 1,
      progressBar: false,
      callbacks: {
        onStepEnd: async (step, logs) => {
          if (step % o.evalEvery === 0 || step === o.steps) await evaluate(step);
          if (step % 10 === 0 || step === o.steps)
            log(
              `  ${method} seed ${seed} step ${step}/${o.steps}: loss ${logs.loss.toFixed(4)}, held-out ${heldout.at(-1)?.[1].toFixed(4)}`,
            );
        },
      },
    },
  );
  const trainSeconds = (performance.now() - t1) / 1000;
  release();
  optimizer.dispose();
  peft.dispose();
  return { method, seed, lr, losses: result.losses, heldout, initSeconds, trainSeconds };
}

/** The first step at which `curve` is at or below `target`, or null. */
export function stepsToReach(curve: Array<[number, number]>, target: number): number | null {
  for (const [step, v] of curve) if (v <= target) return step;
  return null;
}

/** Moving average over a window (a training-loss curve is noisy batch to batch). */
export function smooth(values: number[], window: number): number[] {
  return values.map((_, i) => {
    const from = Math.max(0, i - window + 1);
    const part = values.slice(from, i + 1);
    return part.reduce((a, b) => a + b, 0) / part.length;
  });
}

/** One arm of the experiment: a method at a learning rate (default: the options'). */
export interface Arm {
  method: Method;
  lr?: number;
}

/** Every run of the experiment: for each seed, each arm in turn (default: default LoRA, then LoRA-GA). */
export async function runConvergence(
  o: ConvergenceOptions,
  arms: Arm[] = [{ method: 'lora' }, { method: 'lora_ga' }],
): Promise<Run[]> {
  const runs: Run[] = [];
  for (const seed of o.seeds) for (const arm of arms) runs.push(await runOne(o, arm.method, seed, arm.lr ?? o.lr));
  return runs;
}
