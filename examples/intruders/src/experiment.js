// @ts-check
// The intruders experiment, as a function (main.js runs it in full; the test runs it short): a task
// adapter of fortune-llama (the demo's LoRA on the `fortunes` category it never saw), then PEFT's
// intruder-dimension reduction for several mitigationLambda values, each measured by its perplexity on
// text from pretraining (held out by pretrain.py, 29 categories) and on the task's held-out entries.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getPeftModel } from '@lora/core';
import { WeightSvdCache, reduceIntruderDimension } from '@lora/intruders';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator } from '@lora/tensor';
import { dataUrl, modelUrl, parseFortunes, shuffledBatches as batches } from '@lora-examples/fortune-llama';
import { DEFAULTS as DEMO, perplexity } from '@lora-examples/lora-train/src/demo.js';

export const DEFAULTS = {
  /** The demo's LoRA recipe (r 8, alpha 16, all seven projections, AdamW, cosine schedule), trained longer. */
  steps: 120,
  batchSize: DEMO.batchSize,
  lr: DEMO.lr,
  r: DEMO.r,
  loraAlpha: DEMO.loraAlpha,
  targetModules: DEMO.targetModules,
  lambdas: [0, 0.25, 0.5, 0.75, 1],
  /** PEFT's defaults; each threshold gets its own λ sweep (the leading directions are found once). */
  topK: 10,
  thresholdEpsilons: [0.5],
  /** How many held-out entries of each text to measure (all by default). */
  pretrainEntries: Number.POSITIVE_INFINITY,
  taskEntries: Number.POSITIVE_INFINITY,
  seed: 0,
};

/** Text pretraining saw the like of: pretrain.py's held-out entries of its 29 categories. */
export const pretrainUrl = new URL('../data/pretrain.heldout.txt', import.meta.url);

/**
 * @typedef {Partial<typeof DEFAULTS> & {
 *   log?: (line: string) => void,
 *   modelDir?: string, dataDir?: string, pretrainFile?: string,
 * }} ExperimentOptions  the paths default to fortune-llama's folders and this package's data (a bundle passes its own)
 * @typedef {{ epsilon: number, lambda: number, pretrain: number, task: number, intruders: number, layersWithIntruders: number, seconds: number }} LambdaRow
 */

/**
 * Runs the experiment; returns its measurements.
 * @param {ExperimentOptions} [options]
 */
export async function runExperiment(options = {}) {
  const o = { ...DEFAULTS, ...options };
  const log = options.log ?? console.log;
  const modelDir = options.modelDir ?? fileURLToPath(modelUrl);
  const dataDir = options.dataDir ?? fileURLToPath(dataUrl);
  const tokenizer = await loadTokenizer(modelDir);
  /** @param {string} text */
  const encode = (text) => [...tokenizer.encode(text).ids, 0]; // <|endoftext|> text <|endoftext|>
  /** @param {string} file */
  const read = async (file) => parseFortunes(await readFile(file, 'utf8')).map(encode);
  const taskTrain = await read(join(dataDir, 'fortunes.train.txt'));
  // measured shortest first, so that each batch pads little (every entry is scored on its own either way)
  const byLength = (/** @type {number[][]} */ docs) => docs.sort((a, b) => a.length - b.length);
  const task = byLength((await read(join(dataDir, 'fortunes.heldout.txt'))).slice(0, o.taskEntries));
  const pretrain = byLength(
    (await read(options.pretrainFile ?? fileURLToPath(pretrainUrl))).slice(0, o.pretrainEntries),
  );

  const model = await LlamaForCausalLM.fromPretrained(modelDir);
  const measure = async () => ({ pretrain: await perplexity(model, pretrain), task: await perplexity(model, task) });
  const base = await measure();
  log(
    `base model: perplexity ${base.pretrain.toFixed(2)} on pretraining text (${pretrain.length} entries), ${base.task.toFixed(2)} on the task (${task.length})`,
  );

  manualSeed(o.seed);
  const peft = getPeftModel(model, {
    r: o.r,
    loraAlpha: o.loraAlpha,
    targetModules: o.targetModules,
    taskType: 'CAUSAL_LM',
  });
  const optimizer = new AdamW(peft.trainableParameters(), { lr: o.lr, weightDecay: 0 });
  const rng = new Generator(o.seed);
  const t0 = performance.now();
  await train(peft, () => batches(taskTrain, o.batchSize, rng), {
    optimizer,
    loss: (b) => /** @type {import('@tensorflow/tfjs-core').Scalar} */ (model.forward(b.x, { labels: b.labels }).loss),
    epochs: Math.ceil(o.steps / Math.ceil(taskTrain.length / o.batchSize)),
    maxSteps: o.steps,
    schedule: cosineWarmupSchedule({ warmupSteps: Math.min(5, o.steps - 1), totalSteps: o.steps }),
    maxGradNorm: 1,
    progressBar: false,
  });
  optimizer.dispose();
  const adapter = await measure();
  log(
    `LoRA r=${o.r} trained ${o.steps} steps on the task (${((performance.now() - t0) / 1000).toFixed(1)} s): perplexity ${adapter.pretrain.toFixed(2)} on pretraining text, ${adapter.task.toFixed(2)} on the task`,
  );

  const svdCache = new WeightSvdCache();
  /** @type {LambdaRow[]} */
  const rows = [];
  /** @type {import('@lora/intruders').IntruderReport | undefined} */
  let first;
  try {
    for (const epsilon of o.thresholdEpsilons)
      for (const lambda of o.lambdas) {
        const start = performance.now();
        const report = await reduceIntruderDimension(peft, {
          newAdapterName: 'intruder_reduced',
          topK: o.topK,
          thresholdEpsilon: epsilon,
          mitigationLambda: lambda,
          svdCache,
          loggingSink: null,
        });
        const seconds = (performance.now() - start) / 1000;
        first ??= report;
        const row = {
          epsilon,
          lambda,
          ...(await measure()),
          intruders: report.layers.reduce((n, l) => n + l.intruders.length, 0),
          layersWithIntruders: report.layers.filter((l) => l.intruders.length).length,
          seconds,
        };
        rows.push(row);
        log(
          `ε ${epsilon}, λ ${lambda.toFixed(2)}: perplexity ${row.pretrain.toFixed(2)} on pretraining text, ${row.task.toFixed(2)} on the task; ${row.intruders} intruders in ${row.layersWithIntruders}/${report.layers.length} layers (${seconds.toFixed(2)} s)`,
        );
        peft.setAdapter('default');
        peft.deleteAdapter('intruder_reduced');
      }
  } finally {
    svdCache.dispose();
  }
  const layers = (first?.layers ?? []).map((l) => ({ path: l.path, intruders: l.intruders, cosine: l.cosine }));
  peft.dispose();
  const { log: _, ...settings } = o;
  return { options: settings, base, adapter, rows, layers };
}
