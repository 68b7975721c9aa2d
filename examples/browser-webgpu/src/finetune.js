// @ts-check
// The page's work, without the DOM: fortune-llama from fetched files, LoRA training with a callback
// per step, held-out loss, sampled generations, and the adapter as PEFT's two files in memory.
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, serializeAdapter } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator } from '@lora/tensor';
import { padBatch, parseFortunes, shuffledBatches } from '@lora-examples/fortune-llama';
import trainText from '../../fortune-llama/data/fortunes.train.txt?raw';
import heldoutText from '../../fortune-llama/data/fortunes.heldout.txt?raw';

/** The model's files, served by Vite from examples/fortune-llama/model (emitted as assets by a build). */
const MODEL_FILES = {
  'config.json': new URL('../../fortune-llama/model/config.json', import.meta.url),
  'model.safetensors': new URL('../../fortune-llama/model/model.safetensors', import.meta.url),
  'tokenizer.json': new URL('../../fortune-llama/model/tokenizer.json', import.meta.url),
  'tokenizer_config.json': new URL('../../fortune-llama/model/tokenizer_config.json', import.meta.url),
};

export const SETTINGS = {
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  lr: 5e-3,
  batchSize: 8,
  maxTokens: 48,
  heldoutEntries: 16,
  prompts: ['You will', 'Beware of', 'Your lucky'],
  seed: 0,
};

/**
 * Fetches fortune-llama's files and loads the model and tokenizer from them (no file system).
 * @param {(what: string) => void} [onProgress]
 */
export async function loadFortuneLlama(onProgress = () => {}) {
  /** @type {Record<string, Uint8Array>} */
  const files = {};
  for (const [name, url] of Object.entries(MODEL_FILES)) {
    onProgress(`fetching ${name}`);
    const res = await fetch(url);
    if (!res.ok) throw new Error(`fetching ${url}: HTTP ${res.status}`);
    files[name] = new Uint8Array(await res.arrayBuffer());
  }
  onProgress('loading the model');
  const model = await LlamaForCausalLM.fromPretrained(files);
  const tokenizer = await loadTokenizer(files);
  /** @param {string} text */
  const encode = (text) => [...tokenizer.encode(text).ids, 0].slice(0, SETTINGS.maxTokens);
  return {
    model,
    tokenizer,
    bytes: /** @type {Uint8Array} */ (files['model.safetensors']).byteLength,
    train: parseFortunes(trainText).map(encode),
    heldout: parseFortunes(heldoutText).slice(0, SETTINGS.heldoutEntries).map(encode),
  };
}

/**
 * The mean next-token loss over `docs` (one padded batch).
 * @param {LlamaForCausalLM} model
 * @param {number[][]} docs
 */
export async function heldoutLoss(model, docs) {
  const b = padBatch(docs);
  const loss = tf.tidy(() => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss));
  const value = (await loss.data())[0] ?? Number.NaN;
  tf.dispose([loss, b.x, b.labels]);
  return value;
}

/**
 * One sampled continuation per prompt (temperature 0.8, top-k 40, a seed per prompt).
 * @param {LlamaForCausalLM} model
 * @param {import('@lora/models').Tokenizer} tokenizer
 * @param {number} maxNewTokens
 */
export async function generations(model, tokenizer, maxNewTokens) {
  const out = [];
  for (const [i, p] of SETTINGS.prompts.entries()) {
    const ids = await model.generate([tokenizer.encode(p).ids], {
      maxNewTokens,
      temperature: 0.8,
      topK: 40,
      seed: SETTINGS.seed + i,
    });
    out.push(tokenizer.decode(ids[0] ?? [], { skip_special_tokens: true }));
  }
  return out;
}

/**
 * Attaches LoRA and trains `steps` steps; `onStep` gets each step's loss (awaited, so the page can
 * draw between steps).
 * @param {LlamaForCausalLM} model
 * @param {number[][]} docs
 * @param {number} steps
 * @param {(step: number, loss: number) => void | Promise<void>} onStep
 * @param {number} [batchSize]
 */
export async function fineTune(model, docs, steps, onStep, batchSize = SETTINGS.batchSize) {
  manualSeed(SETTINGS.seed);
  const peft = getPeftModel(model, {
    r: SETTINGS.r,
    loraAlpha: SETTINGS.loraAlpha,
    targetModules: SETTINGS.targetModules,
    taskType: 'CAUSAL_LM',
    baseModelNameOrPath: 'fortune-llama',
  });
  const optimizer = new AdamW(peft.trainableParameters(), { lr: SETTINGS.lr, weightDecay: 0 });
  const rng = new Generator(SETTINGS.seed);
  const perEpoch = Math.ceil(docs.length / batchSize);
  try {
    await train(peft, () => shuffledBatches(docs, batchSize, rng), {
      optimizer,
      loss: (b) => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss),
      epochs: Math.ceil(steps / perEpoch),
      maxSteps: steps,
      schedule: cosineWarmupSchedule({ warmupSteps: Math.min(3, Math.floor(steps / 4)), totalSteps: steps }),
      maxGradNorm: 1,
      callbacks: { onStepEnd: (step, logs) => onStep(step, logs.loss) },
    });
  } finally {
    optimizer.dispose();
  }
  peft.eval();
  return peft;
}

/**
 * The adapter as PEFT's files, zipped (stored, no compression: safetensors barely compress).
 * @param {import('@lora/core').PeftModel} peft
 */
export async function adapterZip(peft) {
  const { zipSync, strToU8 } = await import('fflate');
  const { config, weights } = await serializeAdapter(peft);
  return zipSync({ 'adapter_config.json': strToU8(config), 'adapter_model.safetensors': weights }, { level: 0 });
}
