// @ts-check
// The round trip's two halves on the JS side, shared by main.js (which records) and the test (which
// checks): the settings both languages read (roundtrip.json), the probe both compute on the same
// held-out text, and the seeded training of the adapter that Python then loads.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator, parseSafetensors } from '@lora/tensor';
import { dataUrl, modelUrl, padBatch, parseFortunes, shuffledBatches } from '@lora-examples/fortune-llama';

/**
 * @typedef {{ r: number, lora_alpha: number, target_modules: string[], use_dora: boolean }} Case
 * @typedef {{ cases: Record<string, Case>, training: { steps: number, batch_size: number, lr: number, warmup_steps: number, max_grad_norm: number, seed: number, max_tokens: number }, probe: { heldout_entries: number, max_tokens: number } }} Settings
 * @typedef {{ loss: tf.Scalar, logprobs: tf.Tensor2D, last: tf.Tensor2D }} Probe
 */

/** @type {Settings} */
export const SETTINGS = JSON.parse(await readFile(new URL('../roundtrip.json', import.meta.url), 'utf8'));
export const modelDir = fileURLToPath(modelUrl);
/** Where the recorded expectations are (committed). */
export const expectedDir = fileURLToPath(new URL('../expected/', import.meta.url));

/** The tokenizer, and each fortune entry as the model sees it: `<|endoftext|> text <|endoftext|>`, cut to `max` tokens. */
export async function loadData() {
  const tokenizer = await loadTokenizer(modelDir);
  /** @param {string} name @param {number} max */
  const read = async (name, max) =>
    parseFortunes(await readFile(new URL(name, dataUrl), 'utf8')).map((t) =>
      [...tokenizer.encode(t).ids, 0].slice(0, max),
    );
  return {
    train: await read('fortunes.train.txt', SETTINGS.training.max_tokens),
    probe: (await read('fortunes.heldout.txt', SETTINGS.probe.max_tokens)).slice(0, SETTINGS.probe.heldout_entries),
  };
}

/**
 * What both sides compute on the probe batch (the first held-out entries, right-padded): the loss,
 * each target token's log-probability (`[n, len - 1]`, 0 at padding) and the full logits at each
 * entry's last real position (`[n, vocab]`). python/*.py compute the same with transformers.
 * @param {LlamaForCausalLM} model
 * @param {number[][]} docs
 * @returns {Probe}
 */
export function probe(model, docs) {
  const b = padBatch(docs);
  try {
    return tf.tidy(() => {
      const { logits, loss } = model.forward(b.x, { labels: b.labels });
      const [n, len, vocab] = /** @type {[number, number, number]} */ (logits.shape);
      const logp = tf.logSoftmax(tf.slice(logits, [0, 0, 0], [n, len - 1, vocab]));
      const targets = tf.slice(b.x, [0, 1], [n, len - 1]);
      const picked = tf.sum(tf.mul(logp, tf.oneHot(targets, vocab)), -1);
      const real = tf.tensor2d(
        docs.map((d) => Array.from({ length: len - 1 }, (_, t) => (t + 1 < d.length ? 1 : 0))),
        [n, len - 1],
      );
      const lastRows = docs.map((d, i) =>
        tf.reshape(tf.slice(logits, [i, d.length - 1, 0], [1, 1, vocab]), [1, vocab]),
      );
      return {
        loss: /** @type {tf.Scalar} */ (loss),
        logprobs: /** @type {tf.Tensor2D} */ (tf.mul(picked, real)),
        last: /** @type {tf.Tensor2D} */ (tf.concat(lastRows, 0)),
      };
    });
  } finally {
    tf.dispose([b.x, b.labels]);
  }
}

/** The base model, fresh from its files. */
export function loadBase() {
  return LlamaForCausalLM.fromPretrained(modelDir);
}

/**
 * Trains the adapter of `name` (roundtrip.json) on the 'fortunes' category here, seeded: the one
 * python/check_from_js.py loaded. Returns the PeftModel (eval mode) and the losses.
 * @param {string} name
 * @param {number[][]} docs
 */
export async function trainInJs(name, docs) {
  const c = /** @type {Case} */ (SETTINGS.cases[name]);
  const t = SETTINGS.training;
  const model = await loadBase();
  manualSeed(t.seed);
  const peft = getPeftModel(model, {
    r: c.r,
    loraAlpha: c.lora_alpha,
    targetModules: c.target_modules,
    useDora: c.use_dora,
    taskType: 'CAUSAL_LM',
    baseModelNameOrPath: 'examples/fortune-llama/model',
  });
  const optimizer = new AdamW(peft.trainableParameters(), { lr: t.lr, weightDecay: 0 });
  const rng = new Generator(t.seed);
  const perEpoch = Math.ceil(docs.length / t.batch_size);
  const result = await train(peft, () => shuffledBatches(docs, t.batch_size, rng), {
    optimizer,
    loss: (b) => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss),
    epochs: Math.ceil(t.steps / perEpoch),
    maxSteps: t.steps,
    schedule: cosineWarmupSchedule({ warmupSteps: t.warmup_steps, totalSteps: t.steps }),
    maxGradNorm: t.max_grad_norm,
    progressBar: false,
  });
  optimizer.dispose();
  peft.eval();
  return { peft, model, losses: result.losses };
}

/**
 * A probe file that Python wrote (`loss`, `logprobs`, `last`), as tensors.
 * @param {string} path
 */
export async function readProbe(path) {
  const { tensors } = parseSafetensors(new Uint8Array(await readFile(path)), { file: path });
  return /** @type {Probe} */ (/** @type {unknown} */ (tensors));
}
