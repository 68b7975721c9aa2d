// @ts-check
// The main demo, as a function (main.js runs it; the test runs it short): fortune-llama, a small
// Llama pretrained on Debian's fortunes, learns the one category it never saw — fortune-cookie
// predictions — with LoRA; held-out perplexity and generations before and after; the adapter saved
// in PEFT's format, reloaded, merged, and checked to give the same outputs.
import { readFile, readdir, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, loadAdapter, saveAdapter } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator, maxRelativeError } from '@lora/tensor';
import { dataUrl, modelUrl, padBatch, parseFortunes, shuffledBatches } from '@lora-examples/fortune-llama';

/** @typedef {import('@lora/nn').Module} Module */
/** @typedef {{ forward: LlamaForCausalLM['forward'], generate: LlamaForCausalLM['generate'] }} CausalLM */

export const DEFAULTS = {
  steps: 60,
  batchSize: 16,
  lr: 5e-3,
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  prompts: ['You will', 'Beware of', 'Your lucky', 'Today is'],
  maxNewTokens: 32,
  seed: 0,
};

/**
 * @typedef {object} DemoOptions
 * @property {string} out  Where the adapter goes (a folder; replaced).
 * @property {number} [steps]  Optimizer steps.
 * @property {number} [batchSize]
 * @property {number} [lr]
 * @property {number} [r]
 * @property {number} [loraAlpha]
 * @property {string[]} [targetModules]
 * @property {string[]} [prompts]
 * @property {number} [maxNewTokens]
 * @property {number} [seed]
 * @property {boolean | 'auto'} [progressBar]  `'auto'`: on a terminal.
 * @property {(line: string) => void} [log]
 */

/**
 * Runs the demo; returns its measurements.
 * @param {DemoOptions} options
 */
export async function runDemo(options) {
  const o = { ...DEFAULTS, ...options };
  const log = o.log ?? console.log;
  const t0 = performance.now();
  const seconds = () => ((performance.now() - t0) / 1000).toFixed(1);
  const modelDir = fileURLToPath(modelUrl);
  const tokenizer = await loadTokenizer(modelDir);
  /** @param {string} name */
  const read = async (name) => parseFortunes(await readFile(new URL(name, dataUrl), 'utf8'));
  /** @param {string} text */
  const encode = (text) => [...tokenizer.encode(text).ids, 0]; // <|endoftext|> text <|endoftext|>
  const train_ = (await read('fortunes.train.txt')).map(encode);
  const heldout = (await read('fortunes.heldout.txt')).map(encode);

  const model = await LlamaForCausalLM.fromPretrained(modelDir);
  const { hiddenSize, numHiddenLayers, vocabSize } = model.config;
  log(
    `base: fortune-llama, ${count(model).toLocaleString('en-US')} parameters (hidden ${hiddenSize}, ${numHiddenLayers} layers, vocabulary ${vocabSize}), pretrained on 29 categories of Debian's fortunes`,
  );
  log(
    `task: the 'fortunes' category (fortune-cookie predictions), which pretraining never saw: ${train_.length} training and ${heldout.length} held-out entries`,
  );

  const pplBefore = await perplexity(model, heldout);
  const before = await samples(model, tokenizer, o.prompts, o.maxNewTokens, o.seed);
  log(`held-out perplexity before fine-tuning: ${pplBefore.toFixed(2)}  (${seconds()} s)`);

  manualSeed(o.seed);
  const peft = getPeftModel(model, {
    r: o.r,
    loraAlpha: o.loraAlpha,
    targetModules: o.targetModules,
    taskType: 'CAUSAL_LM',
    baseModelNameOrPath: modelDir,
  });
  const { trainable, all } = peft.getNbTrainableParameters();
  log(
    `LoRA r=${o.r}, alpha=${o.loraAlpha} on ${o.targetModules.join(', ')}: ${trainable.toLocaleString('en-US')} trainable parameters (${((100 * trainable) / all).toFixed(2)}% of ${all.toLocaleString('en-US')})`,
  );
  const optimizer = new AdamW(peft.trainableParameters(), { lr: o.lr, weightDecay: 0 });
  const perEpoch = Math.ceil(train_.length / o.batchSize);
  const rng = new Generator(o.seed);
  const bar = o.progressBar ?? 'auto';
  const result = await train(peft, () => shuffledBatches(train_, o.batchSize, rng), {
    optimizer,
    loss: (b) => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss),
    epochs: Math.ceil(o.steps / perEpoch),
    maxSteps: o.steps,
    schedule: cosineWarmupSchedule({ warmupSteps: Math.min(5, o.steps - 1), totalSteps: o.steps }),
    maxGradNorm: 1,
    progressBar: bar,
    callbacks: {
      onStepEnd: (step, logs) => {
        if (!(bar === true || (bar === 'auto' && process.stderr.isTTY)) && (step % 10 === 0 || step === o.steps))
          log(`  step ${step}/${o.steps}: loss ${logs.loss.toFixed(4)}`);
      },
      onTrainEnd: () => {
        if (bar === true || (bar === 'auto' && process.stderr.isTTY)) process.stderr.write('\n');
      },
    },
  });
  optimizer.dispose();
  const trainSeconds = seconds();
  const pplAfter = await perplexity(model, heldout);
  log(
    `fine-tuned ${result.steps} steps (${(result.steps / perEpoch).toFixed(1)} epochs), loss ${result.losses[0]?.toFixed(3)} -> ${result.losses.at(-1)?.toFixed(3)}  (${trainSeconds} s)`,
  );
  log(
    `held-out perplexity: ${pplBefore.toFixed(2)} -> ${pplAfter.toFixed(2)} (${(100 * (1 - pplAfter / pplBefore)).toFixed(0)}% lower)`,
  );
  const after = await samples(model, tokenizer, o.prompts, o.maxNewTokens, o.seed);
  log('\ngenerations (sampled: temperature 0.8, top-k 40, the same seed for both):');
  o.prompts.forEach((p, i) => {
    log(`  "${p}"`);
    log(`    base: ${oneLine(before[i] ?? '')}`);
    log(`    LoRA: ${oneLine(after[i] ?? '')}`);
  });

  // PEFT's files, then a fresh base with the adapter read back, then that merged into plain weights.
  // force: a second run replaces the adapter the first one saved, and only that (a --out holding
  // anything else is refused, not deleted)
  await saveAdapter(peft, o.out, { force: true });
  const probe = padBatch(heldout.slice(0, 8));
  const greedyPrompts = o.prompts.map((p) => tokenizer.encode(p).ids);
  const trained = tf.tidy(() => model.forward(probe.x).logits);
  const trainedGreedy = await model.generate(greedyPrompts, { maxNewTokens: o.maxNewTokens });
  peft.dispose();

  const reloadedBase = await LlamaForCausalLM.fromPretrained(modelDir);
  const { model: reloaded } = await loadAdapter(reloadedBase, o.out);
  const again = tf.tidy(() => reloadedBase.forward(probe.x).logits);
  const reloadError = maxRelativeError(await again.data(), await trained.data());
  const merged = /** @type {LlamaForCausalLM} */ (reloaded.mergeAndUnload());
  const mergedLogits = tf.tidy(() => merged.forward(probe.x).logits);
  const mergeError = maxRelativeError(await mergedLogits.data(), await trained.data());
  const mergedGreedy = await merged.generate(greedyPrompts, { maxNewTokens: o.maxNewTokens });
  const sameGreedy = JSON.stringify(mergedGreedy) === JSON.stringify(trainedGreedy);
  tf.dispose([trained, again, mergedLogits, probe.x, probe.labels]);
  merged.dispose();
  log(
    `\nadapter saved in PEFT's format and read back: logits match the trained model to ${reloadError.toExponential(1)}`,
  );
  log(
    `merged into the base (mergeAndUnload): logits within ${mergeError.toExponential(1)}, greedy continuations ${sameGreedy ? 'identical' : 'DIFFERENT'}`,
  );

  const files = await readdir(o.out);
  const where = relative(process.cwd(), o.out) || o.out;
  log(`\nfiles in ${where}:`);
  for (const f of files) log(`  ${f}  (${(await stat(join(o.out, f))).size.toLocaleString('en-US')} bytes)`);
  log(`done in ${seconds()} s`);
  return {
    pplBefore,
    pplAfter,
    reloadError,
    mergeError,
    sameGreedy,
    steps: result.steps,
    losses: result.losses,
    files,
  };
}

/** @param {Module} m */
function count(m) {
  // tied embeddings: the shared table once
  return [...new Set(m.parameters())].reduce((n, p) => n + p.size, 0);
}

/**
 * Perplexity per token over `docs`, each entry on its own (as pretrain.py's reference measures it).
 * @param {CausalLM} model
 * @param {number[][]} docs
 */
export async function perplexity(model, docs, batch = 20) {
  let total = 0;
  let targets = 0;
  for (let i = 0; i < docs.length; i += batch) {
    const b = padBatch(docs.slice(i, i + batch));
    const loss = tf.tidy(() => /** @type {tf.Scalar} */ (model.forward(b.x, { labels: b.labels }).loss));
    total += ((await loss.data())[0] ?? Number.NaN) * b.targets; // the mean over this batch's targets
    targets += b.targets;
    tf.dispose([loss, b.x, b.labels]);
  }
  return Math.exp(total / targets);
}

/**
 * @param {CausalLM} model
 * @param {import('@lora/models').Tokenizer} tokenizer
 * @param {string[]} prompts
 * @param {number} maxNewTokens
 * @param {number} seed
 */
async function samples(model, tokenizer, prompts, maxNewTokens, seed) {
  const out = [];
  for (const [i, p] of prompts.entries()) {
    const ids = await model.generate([tokenizer.encode(p).ids], {
      maxNewTokens,
      temperature: 0.8,
      topK: 40,
      seed: seed + i,
    });
    out.push(tokenizer.decode(ids[0] ?? [], { skip_special_tokens: true }));
  }
  return out;
}

/** @param {string} s */
function oneLine(s) {
  return s.replace(/\t+/g, ' ').replace(/\n+/g, ' / ').trim();
}
