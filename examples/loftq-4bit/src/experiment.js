// @ts-check
// LoRA over quantized bases, measured on fortune-llama's task (the demo's: fortune-cookie predictions,
// a category pretraining never saw): the same LoRA (rank, alpha, targets, seed, batches, steps) over
// the float32 base, over its 4-bit and 2-bit versions (QLoRA), and over those with LoftQ's
// initialisation; held-out perplexity before and after, the loss of every step, and the bytes the
// base holds at 32, 8, 4 and 2 bits. Also: LoftQ's ||W - Q - BA|| / ||W|| per alternating step on
// fortune-llama's own weights.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, loadAdapter, serializeAdapter } from '@lora/core';
import { loftqInit, modelBytes, quantizeModel } from '@lora/loftq';
import { LlamaForCausalLM } from '@lora/models';
import { AdamW, Linear, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator } from '@lora/tensor';
import { dataUrl, modelUrl, padBatch, parseFortunes, shuffledBatches as batches } from '@lora-examples/fortune-llama';
import { loadTokenizer } from '@lora/models';
import { perplexity } from '@lora-examples/lora-train/src/demo.js';

export const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

export const DEFAULTS = {
  steps: 60,
  batchSize: 16,
  lr: 5e-3,
  r: 8,
  // LoftQ's correction is exact at a scaling alpha / r of 1 (PEFT does not compensate other scalings):
  // every run here uses it, so that the runs differ only by their base and initialisation
  loraAlpha: 8,
  loftqIter: 5,
  seed: 0,
  /** The modules LoRA (and the quantization) targets. */
  targets: TARGETS,
};

/**
 * @typedef {{ name: string, bits: 32 | 8 | 4 | 2, init: 'lora' | 'loftq', loftqIter?: number }} RunSpec
 * @typedef {{ name: string, bits: number, init: string, pplStart: number, pplEnd: number, losses: number[], seconds: number, baseBytes: number }} RunResult
 */

/** @type {RunSpec[]} */
export const RUNS = [
  { name: 'LoRA, float32 base', bits: 32, init: 'lora' },
  { name: 'QLoRA, NF4 base', bits: 4, init: 'lora' },
  { name: 'LoftQ, NF4 base', bits: 4, init: 'loftq' },
  { name: 'QLoRA, 2-bit base', bits: 2, init: 'lora' },
  { name: 'LoftQ, 2-bit base', bits: 2, init: 'loftq' },
];

/** fortune-llama's data, tokenized: `<|endoftext|> text <|endoftext|>` per entry. */
export async function loadTask() {
  const dir = fileURLToPath(modelUrl);
  const tokenizer = await loadTokenizer(dir);
  /** @param {string} name */
  const read = async (name) => parseFortunes(await readFile(new URL(name, dataUrl), 'utf8'));
  /** @param {string} text */
  const encode = (text) => [...tokenizer.encode(text).ids, 0];
  return {
    dir,
    train: (await read('fortunes.train.txt')).map(encode),
    heldout: (await read('fortunes.heldout.txt')).map(encode),
  };
}

/**
 * The base a run trains over, with its adapter attached: float32, quantized (QLoRA: LoRA's default
 * init over the quantized base), or LoftQ (initialised on the float32 model, whose target weights
 * become Q; the base is then quantized, which gives Q's codes back, and the adapter is loaded onto it,
 * as PEFT's LoftQ workflow saves and reloads them).
 * @param {string} dir
 * @param {RunSpec} spec
 * @param {typeof DEFAULTS} o
 */
export async function modelFor(dir, spec, o) {
  const model = await LlamaForCausalLM.fromPretrained(dir);
  const lora = {
    r: o.r,
    loraAlpha: o.loraAlpha,
    targetModules: o.targets,
    taskType: /** @type {const} */ ('CAUSAL_LM'),
  };
  manualSeed(o.seed);
  if (spec.bits === 32) return { model, peft: getPeftModel(model, lora) };
  if (spec.init === 'lora') {
    quantizeModel(model, { bits: spec.bits, targetModules: o.targets });
    return { model, peft: getPeftModel(model, lora) };
  }
  const loftq = getPeftModel(model, {
    ...lora,
    initLoraWeights: 'loftq',
    loftqConfig: { loftqBits: spec.bits, loftqIter: spec.loftqIter ?? o.loftqIter },
  });
  await loftq.initialized();
  const saved = await serializeAdapter(loftq);
  loftq.unload(); // the Linear layers hold Q now
  quantizeModel(model, { bits: spec.bits, targetModules: o.targets });
  // loading never runs an initialisation: the saved LoftQ factors come back as they are
  const files = new Map(
    /** @type {[string, string | Uint8Array][]} */ ([
      ['adapter_config.json', saved.config],
      ['adapter_model.safetensors', saved.weights],
    ]),
  );
  const { model: peft } = await loadAdapter(model, files, { isTrainable: true });
  return { model, peft };
}

/**
 * One run: perplexity over the held-out entries before and after training, every step's loss.
 * @param {Awaited<ReturnType<typeof loadTask>>} task
 * @param {RunSpec} spec
 * @param {Partial<typeof DEFAULTS> & { log?: (line: string) => void }} [options]
 * @returns {Promise<RunResult>}
 */
export async function runOne(task, spec, options = {}) {
  const o = { ...DEFAULTS, ...options };
  const t0 = performance.now();
  const { model, peft } = await modelFor(task.dir, spec, o);
  const baseBytes = modelBytes(model) - peft.trainableParameters().reduce((n, p) => n + 4 * p.size, 0);
  const pplStart = await perplexity(model, task.heldout);
  const optimizer = new AdamW(peft.trainableParameters(), { lr: o.lr, weightDecay: 0 });
  const perEpoch = Math.ceil(task.train.length / o.batchSize);
  const rng = new Generator(o.seed);
  const result = await train(peft, () => batches(task.train, o.batchSize, rng), {
    optimizer,
    loss: (b) => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss),
    epochs: Math.ceil(o.steps / perEpoch),
    maxSteps: o.steps,
    schedule: cosineWarmupSchedule({ warmupSteps: Math.min(5, o.steps - 1), totalSteps: o.steps }),
    maxGradNorm: 1,
    progressBar: false,
  });
  optimizer.dispose();
  const pplEnd = await perplexity(model, task.heldout);
  peft.dispose();
  const seconds = (performance.now() - t0) / 1000;
  o.log?.(
    `${spec.name.padEnd(20)} perplexity ${pplStart.toFixed(2)} -> ${pplEnd.toFixed(2)}, loss ${result.losses[0]?.toFixed(3)} -> ${result.losses.at(-1)?.toFixed(3)}, base ${(baseBytes / 2 ** 20).toFixed(2)} MiB (${seconds.toFixed(0)} s)`,
  );
  return {
    name: spec.name,
    bits: spec.bits,
    init: spec.init,
    pplStart,
    pplEnd,
    losses: result.losses,
    seconds,
    baseBytes,
  };
}

/**
 * How far each base (with its adapter, before training) is from the float32 model: the mean squared
 * error of the logits over `docs` held-out entries, PEFT's LoftQ test metric (LoftQ must beat QLoRA).
 * @param {Awaited<ReturnType<typeof loadTask>>} task
 * @param {RunSpec[]} specs
 * @param {Partial<typeof DEFAULTS> & { docs?: number }} [options]
 */
export async function logitsErrors(task, specs, options = {}) {
  const o = { ...DEFAULTS, ...options };
  const b = padBatch(task.heldout.slice(0, options.docs ?? 16));
  /** @param {RunSpec} spec */
  const logits = async (spec) => {
    const { model, peft } = await modelFor(task.dir, spec, o);
    const l = tf.tidy(() => model.forward(b.x).logits);
    const d = await l.data();
    l.dispose();
    peft.dispose();
    return d;
  };
  const fp = await logits({ name: 'float32', bits: 32, init: 'lora' });
  const out = [];
  for (const spec of specs) {
    const d = await logits(spec);
    let s = 0;
    for (let i = 0; i < d.length; i++) s += ((d[i] ?? 0) - (fp[i] ?? 0)) ** 2;
    out.push({ name: spec.name, mse: s / d.length });
  }
  tf.dispose([b.x, b.labels]);
  return out;
}

/**
 * Bytes the base holds at each bit width: the whole model (parameters and buffers, as on the backend)
 * and its quantized Linear layers alone, with the backend's own count (`tf.memory().numBytes`) beside.
 * @param {string} dir
 * @param {string[]} [targets]
 */
export async function memoryByBits(dir, targets = TARGETS) {
  const rows = [];
  for (const bits of /** @type {const} */ ([32, 8, 4, 2])) {
    const before = tf.memory().numBytes;
    const model = await LlamaForCausalLM.fromPretrained(dir);
    let linearBytes = 0;
    if (bits !== 32) linearBytes = quantizeModel(model, { bits, targetModules: targets }).bytesAfter;
    else
      for (const [path, m] of model.namedModules())
        if (m instanceof Linear && targets.some((t) => path.endsWith(t))) linearBytes += 4 * m.weight.size;
    rows.push({ bits, modelBytes: modelBytes(model), linearBytes, backendBytes: tf.memory().numBytes - before });
    model.dispose();
  }
  return rows;
}

/**
 * LoftQ's error per step on fortune-llama's target weights: mean over the weights of
 * ||W - Q - B·A|| / ||W|| after each of `steps` steps, at each bit width (rank `r`).
 * @param {string} dir
 * @param {{ r?: number, steps?: number, bits?: (2 | 3 | 4 | 8)[], layers?: number }} [options]
 */
export async function loftqErrors(dir, options = {}) {
  const r = options.r ?? DEFAULTS.r;
  const steps = options.steps ?? 5;
  const model = await LlamaForCausalLM.fromPretrained(dir);
  const weights = [...model.namedModules()]
    .filter(([path, m]) => m instanceof Linear && TARGETS.some((t) => path.endsWith(t)))
    .slice(0, options.layers ?? Number.POSITIVE_INFINITY)
    .map(([, m]) => /** @type {Linear} */ (m).weight);
  const out = [];
  for (const bits of options.bits ?? [4, 3, 2]) {
    const sums = new Array(steps).fill(0);
    for (const w of weights) {
      const res = await loftqInit(/** @type {tf.Tensor2D} */ (w), {
        numBits: bits,
        reducedRank: r,
        numIter: steps,
        onIteration: (s) => {
          sums[s.iteration - 1] += s.relativeError;
        },
      });
      tf.dispose([res.dequantized, res.loraA, res.loraB]);
    }
    out.push({ bits, errors: sums.map((s) => s / weights.length) });
  }
  model.dispose();
  return { weights: weights.length, r, out };
}
