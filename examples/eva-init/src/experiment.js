// @ts-check
// EVA against LoRA's default init on one fine-tuning task: fortune-llama (a small Llama pretrained on
// Debian's fortunes) learns the category it never saw, fortune-cookie predictions. For each seed, both
// runs see the same batches in the same order with the same optimizer; only the init of A differs (and
// EVA's rank redistribution). Writes results/experiment.json; src/plot-experiment.js plots it
// (results/loss.{svg,png}).
//
//   npm start -w @lora-examples/eva-init                 # 3 seeds × 120 steps on wasm, then the plot
//   LORA_BACKEND=webgpu EVA_RESULTS=dir node src/experiment.js   # elsewhere (bundled for the GPU machine)
//   FORTUNE_LLAMA_DIR=… FORTUNE_LLAMA_DATA=… …           # another copy of the model and data
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { evaProgressBar, initializeLoraEvaWeights } from '@lora/eva';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator } from '@lora/tensor';
import { startBackend } from './backend.js';

const here = import.meta.dirname;
const MODEL = process.env.FORTUNE_LLAMA_DIR ?? join(here, '..', '..', 'fortune-llama', 'model');
const DATA = process.env.FORTUNE_LLAMA_DATA ?? join(here, '..', '..', 'fortune-llama', 'data');
const SEEDS = (process.env.EVA_SEEDS ?? '0,1,2').split(',').map(Number);
const STEPS = Number(process.env.EVA_STEPS ?? 120);
const SETTINGS = {
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  lr: 5e-3,
  batchSize: 16,
  evaBatches: 8,
  evaConfig: { rho: 2, tau: 0.99 },
};

const info = await startBackend(/** @type {'wasm'} */ (process.env.LORA_BACKEND ?? 'wasm'), here);
console.log(`backend: ${info.name} (${info.adapter}); model: ${MODEL}`);

/** @param {string} text */
const parseFortunes = (text) =>
  text
    .replace(/\r\n/g, '\n')
    .split(/^%$/m)
    .map((e) => e.replace(/^\n+|\n+$/g, ''))
    .filter((e) => e.trim().length > 0);
const tokenizer = await loadTokenizer(MODEL);
/** @param {string} text  <|endoftext|> text <|endoftext|>, as the base was pretrained */
const encode = (text) => [...tokenizer.encode(text).ids, 0];
const trainDocs = parseFortunes(await readFile(join(DATA, 'fortunes.train.txt'), 'utf8')).map(encode);
const heldout = parseFortunes(await readFile(join(DATA, 'fortunes.heldout.txt'), 'utf8')).map(encode);
console.log(`task: ${trainDocs.length} training and ${heldout.length} held-out fortune-cookie entries`);

/** Right-padded: inputs with <|endoftext|>, labels with -100, an attention mask for EVA. @param {number[][]} docs */
function padBatch(docs) {
  const len = Math.max(...docs.map((d) => d.length));
  const rows = docs.length;
  return {
    inputIds: tf.tensor2d(
      docs.map((d) => [...d, ...Array(len - d.length).fill(0)]),
      [rows, len],
      'int32',
    ),
    attentionMask: tf.tensor2d(
      docs.map((d) => [...d.map(() => 1), ...Array(len - d.length).fill(0)]),
      [rows, len],
      'int32',
    ),
    labels: tf.tensor2d(
      docs.map((d) => [...d, ...Array(len - d.length).fill(-100)]),
      [rows, len],
      'int32',
    ),
  };
}

/** The batch order of a seed: epochs of shuffled entries, as index lists. @param {number} seed */
function schedule(seed) {
  const rng = new Generator(seed);
  const out = [];
  while (out.length < STEPS) {
    const order = trainDocs.map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rng.nextFloat53() * (i + 1));
      [order[i], order[j]] = [/** @type {number} */ (order[j]), /** @type {number} */ (order[i])];
    }
    for (let i = 0; i + SETTINGS.batchSize <= order.length && out.length < STEPS; i += SETTINGS.batchSize)
      out.push(order.slice(i, i + SETTINGS.batchSize));
  }
  return out;
}

/** @param {number[][]} plan  yields each batch, freeing it when the next is asked for */
function* batchesOf(plan) {
  for (const idx of plan) {
    const b = padBatch(idx.map((k) => /** @type {number[]} */ (trainDocs[k])));
    try {
      yield b;
    } finally {
      tf.dispose(Object.values(b));
    }
  }
}

/** Mean loss per target token over the held-out entries, as perplexity. @param {LlamaForCausalLM} model */
async function perplexity(model) {
  let total = 0;
  let targets = 0;
  for (let i = 0; i < heldout.length; i += 20) {
    const docs = heldout.slice(i, i + 20);
    const b = padBatch(docs);
    const n = docs.reduce((s, d) => s + d.length - 1, 0);
    const loss = tf.tidy(() => /** @type {tf.Scalar} */ (model.forward(b.inputIds, { labels: b.labels }).loss));
    total += ((await loss.data())[0] ?? Number.NaN) * n;
    targets += n;
    tf.dispose([loss, ...Object.values(b)]);
  }
  return Math.exp(total / targets);
}

/** @param {'default' | 'eva'} init @param {number} seed */
async function run(init, seed) {
  const model = await LlamaForCausalLM.fromPretrained(MODEL);
  const plan = schedule(seed);
  manualSeed(seed);
  const peft = getPeftModel(model, {
    r: SETTINGS.r,
    loraAlpha: SETTINGS.loraAlpha,
    targetModules: SETTINGS.targetModules,
    initLoraWeights: init === 'eva' ? 'eva' : true,
    ...(init === 'eva' ? { evaConfig: SETTINGS.evaConfig } : {}),
  });
  /** @type {import('@lora/eva').EvaReport | undefined} */
  let eva;
  if (init === 'eva') {
    // EVA's data: the first batches of this seed's training order (PEFT's example uses the training dataloader)
    const bar = evaProgressBar();
    await initializeLoraEvaWeights(peft, () => batchesOf(plan.slice(0, SETTINGS.evaBatches)), {
      onProgress: process.stderr.isTTY ? bar.update : undefined,
      progressBar: false,
      onComplete: (r) => {
        eva = r;
      },
    });
    bar.done();
  }
  const { trainable } = peft.getNbTrainableParameters();
  const optimizer = new AdamW(peft.trainableParameters(), { lr: SETTINGS.lr, weightDecay: 0 });
  const t0 = performance.now();
  const result = await train(peft, () => batchesOf(plan), {
    optimizer,
    loss: (b) => /** @type {tf.Scalar} */ (model.forward(b.inputIds, { labels: b.labels }).loss),
    maxSteps: STEPS,
    schedule: cosineWarmupSchedule({ warmupSteps: 5, totalSteps: STEPS }),
    maxGradNorm: 1,
    progressBar: 'auto',
  });
  const trainSeconds = (performance.now() - t0) / 1000;
  optimizer.dispose();
  const ppl = await perplexity(model);
  peft.dispose();
  return { init, seed, losses: result.losses, heldoutPerplexity: ppl, trainable, trainSeconds, eva };
}

const base = await LlamaForCausalLM.fromPretrained(MODEL);
const pplBase = await perplexity(base);
base.dispose();
console.log(`held-out perplexity of the base: ${pplBase.toFixed(2)}`);
/** @type {Awaited<ReturnType<typeof run>>[]} */
const runs = [];
for (const seed of SEEDS)
  for (const init of /** @type {const} */ (['default', 'eva'])) {
    const r = await run(init, seed);
    runs.push(r);
    const last = r.losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
    console.log(
      `seed ${seed} ${init.padEnd(7)}: loss ${r.losses[0]?.toFixed(3)} -> ${last.toFixed(3)} (mean of the last 10), held-out perplexity ${r.heldoutPerplexity.toFixed(2)}, ${r.trainable.toLocaleString('en-US')} trainable${
        r.eva
          ? `; EVA: ${r.eva.steps} batches, ${(r.eva.elapsedMs / 1000).toFixed(1)} s, ranks ${Object.values(r.eva.ranks).join(' ')}`
          : ''
      }`,
    );
  }

const out = process.env.EVA_RESULTS ?? join(here, '..', 'results');
await mkdir(out, { recursive: true });
const summary = (/** @type {'default' | 'eva'} */ init) => {
  const mine = runs.filter((r) => r.init === init);
  const avg = (/** @type {number[]} */ v) => v.reduce((a, b) => a + b, 0) / v.length;
  return {
    heldoutPerplexity: avg(mine.map((r) => r.heldoutPerplexity)),
    finalLoss: avg(mine.map((r) => avg(r.losses.slice(-10)))),
    lossAtStep: Object.fromEntries(
      [...new Set([10, 25, 50, 100, STEPS])]
        .filter((s) => s <= STEPS)
        .map((s) => [s, avg(mine.map((r) => r.losses[s - 1] ?? Number.NaN))]),
    ),
  };
};
await writeFile(
  join(out, 'experiment.json'),
  `${JSON.stringify({ date: new Date().toISOString().slice(0, 10), backend: info.name, model: 'fortune-llama', settings: { ...SETTINGS, steps: STEPS, seeds: SEEDS }, pplBase, default: summary('default'), eva: summary('eva'), runs }, null, 1)}\n`,
);
console.log(`\nmean over ${SEEDS.length} seeds (held-out perplexity of the base ${pplBase.toFixed(2)}):`);
for (const init of /** @type {const} */ (['default', 'eva'])) {
  const s = summary(init);
  console.log(
    `  ${init.padEnd(7)}: loss at steps ${Object.keys(s.lossAtStep).join('/')}: ${Object.values(s.lossAtStep)
      .map((v) => v.toFixed(3))
      .join(' / ')}; held-out perplexity ${s.heldoutPerplexity.toFixed(2)}`,
  );
}
console.log(`wrote ${join(out, 'experiment.json')} (plot it with src/plot-experiment.js)`);
