/**
 * Arrow on the demo's base (issue 19): a library of LoRA experts, one per category of fortune-llama's
 * pretraining corpus, routed zero-shot on the category neither the base nor any expert saw
 * (`fortunes`, fortune-cookie predictions), against the base, each single expert and a uniform merge
 * of all of them; and on each expert's own held-out text (in domain).
 *
 *   npm run experiment -w @lora-examples/arrow-library
 *
 * The categories' text comes from `tools/demo-model/.data/corpus/` (made by
 * `python3 tools/demo-model/prepare_corpus.py`; LORA_CORPUS_DIR to read it elsewhere). Writes
 * `out/experts/<category>/` (PEFT adapters), `results.json`, and the plot `arrow-topk.svg|png` beside
 * this package's README. Environment: LORA_BACKEND (default wasm), LORA_ARROW_CATEGORIES (default
 * computers,cookie,politics,science), LORA_ARROW_STEPS (default 40), LORA_ARROW_EVAL_ENTRIES (default 40),
 * LORA_ARROW_ROOT (the repository, for a bundle run elsewhere), LORA_ARROW_RESULTS (where results.json
 * and the plot go); LORA_ARROW_PLOT_FROM=results.json only re-makes the plot from a run's record.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { addWeightedAdapter, getPeftModel, loadAdapter, saveAdapter } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { AdamW, cosineWarmupSchedule, manualSeed, train } from '@lora/nn';
import { Generator, initBackend } from '@lora/tensor';
import { arrowRouters, createArrowModel } from '@lora/arrow';

// LORA_ARROW_ROOT: the repository (a bundle elsewhere, e.g. on the GPU machine, runs from its root)
const ROOT = process.env.LORA_ARROW_ROOT ?? join(import.meta.dirname, '..', '..', '..');
const HERE = join(ROOT, 'examples', 'arrow-library');
/** Where results.json and the plot go (default beside the README). */
const RESULTS = process.env.LORA_ARROW_RESULTS ?? HERE;
const MODEL = join(ROOT, 'examples', 'fortune-llama', 'model');
const UNSEEN = join(ROOT, 'examples', 'fortune-llama', 'data', 'fortunes.heldout.txt');
const CORPUS = process.env.LORA_CORPUS_DIR ?? join(ROOT, 'tools', 'demo-model', '.data', 'corpus');
const OUT = process.env.LORA_ARROW_RESULTS ? join(RESULTS, 'out') : join(HERE, 'out');
// four of the largest pretraining categories (590 to 1062 training entries each); sized for a shared 2-core CPU
const CATEGORIES = (process.env.LORA_ARROW_CATEGORIES ?? 'computers,cookie,politics,science').split(',');
const STEPS = Number(process.env.LORA_ARROW_STEPS ?? 40);
const LORA = {
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  taskType: 'CAUSAL_LM',
};
const BATCH = 8;
/** Tokens kept of each entry (most are shorter; the model has 256 positions). */
const CONTEXT = 64;
/** Held-out entries evaluated per set. */
const EVAL_ENTRIES = Number(process.env.LORA_ARROW_EVAL_ENTRIES ?? 40);
const LR = 5e-3;

type Doc = number[];

function readCorpus(split: 'train' | 'heldout'): Map<string, string[]> {
  const file = join(CORPUS, `pretrain.${split}.jsonl`);
  if (!existsSync(file))
    throw new Error(
      `${file} not found: run python3 tools/demo-model/prepare_corpus.py first (or set LORA_CORPUS_DIR to its corpus/ folder)`,
    );
  const by = new Map<string, string[]>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const { category, text } = JSON.parse(line) as { category: string; text: string };
    by.set(category, [...(by.get(category) ?? []), text]);
  }
  return by;
}

/** Right-padded ids (with <|endoftext|>) and labels (-100 on the padding); the number of predicted tokens. */
function pad(docs: Doc[]) {
  const len = Math.max(...docs.map((d) => d.length));
  return {
    x: tf.tensor2d(
      docs.map((d) => [...d, ...new Array<number>(len - d.length).fill(0)]),
      [docs.length, len],
      'int32',
    ),
    labels: tf.tensor2d(
      docs.map((d) => [...d, ...new Array<number>(len - d.length).fill(-100)]),
      [docs.length, len],
      'int32',
    ),
    targets: docs.reduce((n, d) => n + d.length - 1, 0),
  };
}

function* shuffled(docs: Doc[], rng: Generator) {
  const order = docs.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng.nextFloat53() * (i + 1));
    [order[i], order[j]] = [order[j] as number, order[i] as number];
  }
  for (let i = 0; i < order.length; i += BATCH) {
    const b = pad(order.slice(i, i + BATCH).map((k) => docs[k] as Doc));
    try {
      yield b;
    } finally {
      tf.dispose([b.x, b.labels]);
    }
  }
}

/** Perplexity per predicted token over `docs`, each entry on its own. */
async function perplexity(model: LlamaForCausalLM, docs: Doc[]): Promise<number> {
  let nll = 0;
  let n = 0;
  for (let i = 0; i < docs.length; i += 20) {
    const b = pad(docs.slice(i, i + 20));
    const loss = tf.tidy(() => model.forward(b.x, { labels: b.labels }).loss as tf.Scalar);
    nll += ((await loss.data())[0] as number) * b.targets;
    n += b.targets;
    tf.dispose([loss, b.x, b.labels]);
  }
  return Math.exp(nll / n);
}

async function main() {
  const info = await initBackend((process.env.LORA_BACKEND as 'wasm') ?? 'wasm');
  const t0 = performance.now();
  const seconds = () => ((performance.now() - t0) / 1000).toFixed(0);
  const tokenizer = await loadTokenizer(MODEL);
  // entries cut at CONTEXT tokens: a few are over 500 (and a batch of 16 × 256 ran wasm out of memory in training)
  const encode = (text: string): Doc => [...tokenizer.encode(text).ids, 0].slice(0, CONTEXT);
  const trainSet = readCorpus('train');
  const heldSet = readCorpus('heldout');
  const unseen = readFileSync(UNSEEN, 'utf8')
    .split(/^%$/m)
    .map((e) => e.replace(/^\n+|\n+$/g, ''))
    .filter((e) => e.trim())
    .slice(0, EVAL_ENTRIES)
    .map(encode);
  console.log(
    `fortune-llama on ${info.name}; ${CATEGORIES.length} experts (LoRA r=${LORA.r} on all 7 projections, ${STEPS} steps of ${BATCH} entries cut at ${CONTEXT} tokens), one per category: ${CATEGORIES.join(', ')}`,
  );
  console.log(`held-out category: 'fortunes' (${unseen.length} entries), never seen by the base or any expert\n`);

  // 1. one expert per category, saved in PEFT's format
  const experts: string[] = [];
  for (const [i, cat] of CATEGORIES.entries()) {
    const docs = (trainSet.get(cat) ?? []).map(encode);
    if (docs.length === 0) throw new Error(`no training text for category '${cat}' in ${CORPUS}`);
    const base = await LlamaForCausalLM.fromPretrained(MODEL);
    manualSeed(i);
    const peft = getPeftModel(base, LORA);
    const optimizer = new AdamW(peft.trainableParameters(), { lr: LR, weightDecay: 0 });
    const rng = new Generator(i);
    const perEpoch = Math.ceil(docs.length / BATCH);
    const result = await train(peft, () => shuffled(docs, rng), {
      optimizer,
      loss: (b) => base.forward(b.x, { labels: b.labels }).loss as tf.Scalar,
      epochs: Math.ceil(STEPS / perEpoch),
      maxSteps: STEPS,
      schedule: cosineWarmupSchedule({ warmupSteps: 5, totalSteps: STEPS }),
      maxGradNorm: 1,
      progressBar: false,
    });
    optimizer.dispose();
    const dir = join(OUT, 'experts', cat);
    await saveAdapter(peft, dir, { force: true }); // replaces a previous run's expert
    experts.push(dir);
    console.log(
      `  expert ${cat}: ${docs.length} entries, loss ${result.losses[0]?.toFixed(2)} -> ${result.losses.at(-1)?.toFixed(2)}  (${seconds()} s)`,
    );
    peft.dispose();
  }

  // 2. the evaluation sets: the unseen category, and each expert's own held-out entries
  const evals: [string, Doc[]][] = [
    ['fortunes (unseen)', unseen],
    ...CATEGORIES.map((c) => [c, (heldSet.get(c) ?? []).slice(0, EVAL_ENTRIES).map(encode)] as [string, Doc[]]),
  ];
  const table = new Map<string, number[]>();
  const measure = async (label: string, model: LlamaForCausalLM) => {
    const row: number[] = [];
    for (const [, docs] of evals) row.push(await perplexity(model, docs));
    table.set(label, row);
  };

  const base = await LlamaForCausalLM.fromPretrained(MODEL);
  await measure('base', base);
  const { model: peft } = await loadAdapter(base, experts[0] as string, { adapterName: CATEGORIES[0] });
  for (const [i, dir] of experts.entries()) if (i > 0) await loadAdapter(peft, dir, { adapterName: CATEGORIES[i] });
  for (const cat of CATEGORIES) {
    peft.setAdapter(cat);
    await measure(`expert: ${cat}`, base);
  }
  // uniform merge: the mean of the experts' ΔW ('cat' keeps each product exact)
  await addWeightedAdapter(
    peft,
    CATEGORIES,
    CATEGORIES.map(() => 1 / CATEGORIES.length),
    'uniform',
    {
      combinationType: 'cat',
    },
  );
  peft.setAdapter('uniform');
  await measure('uniform merge', base);
  console.log(`  single experts and the uniform merge measured  (${seconds()} s)`);
  peft.dispose();

  // 3. Arrow from the saved experts, top-k 1…E, with and without GenKnowSub's general adapter
  const ks = [1, 2, 3, 4, CATEGORIES.length].filter((k, i, a) => k <= CATEGORIES.length && a.indexOf(k) === i);
  const usageOnUnseen: Record<string, number> = {};
  for (const k of ks) {
    const model = await createArrowModel(await LlamaForCausalLM.fromPretrained(MODEL), experts, {
      topK: k,
      rngSeed: 0,
    });
    if (k === 2) for (const [, r] of arrowRouters(model)) r.recordUsage = true;
    const lm = model.model as LlamaForCausalLM;
    const row: number[] = [];
    for (const [j, [, docs]] of evals.entries()) {
      row.push(await perplexity(lm, docs));
      if (k === 2 && j === 0) {
        // where the unseen category's tokens went: each expert's share of the routing weight, all layers
        for (const [, r] of arrowRouters(model)) {
          const u = await r.usage();
          u.names.forEach((n, e) => {
            const cat = CATEGORIES[Number(n.replace('task_', ''))] as string;
            usageOnUnseen[cat] = (usageOnUnseen[cat] ?? 0) + (u.weight[e] as number);
          });
          r.recordUsage = false;
        }
      }
    }
    table.set(`Arrow top-${k}`, row);
    console.log(`  Arrow top-${k} measured  (${seconds()} s)`);
    model.dispose();
  }

  // 4. the table, the plot, the record
  const header = ['model', ...evals.map(([n]) => n)];
  const lines = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`];
  for (const [label, row] of table) lines.push(`| ${label} | ${row.map((v) => v.toFixed(2)).join(' | ')} |`);
  console.log(`\nperplexity per token on held-out entries (lower is better):\n\n${lines.join('\n')}`);
  const total = Object.values(usageOnUnseen).reduce((a, b) => a + b, 0);
  const shares = Object.entries(usageOnUnseen)
    .sort((a, b) => b[1] - a[1])
    .map(([c, w]) => `${c} ${((100 * w) / total).toFixed(0)}%`);
  console.log(`\nArrow top-2 on the unseen category, each expert's share of the routing weight: ${shares.join(', ')}`);

  const plot = await plotUnseen(table, CATEGORIES, ks, info.name);
  writeFileSync(
    join(RESULTS, 'results.json'),
    `${JSON.stringify(
      {
        date: new Date().toISOString().slice(0, 10),
        backend: info.name,
        categories: CATEGORIES,
        steps: STEPS,
        evals: evals.map(([n, d]) => ({ name: n, entries: d.length })),
        perplexity: Object.fromEntries(table),
        arrowTop2UnseenShare: Object.fromEntries(Object.entries(usageOnUnseen).map(([c, w]) => [c, w / total])),
        seconds: Number(seconds()),
      },
      null,
      1,
    )}\n`,
  );
  console.log(
    `\nwrote results.json${plot ? ' and arrow-topk.svg/.png' : ' (no plot: @lora-examples/plot is not here)'}  (${seconds()} s)`,
  );
}

/**
 * The plot of the unseen category's perplexity against Arrow's top-k (with the merge, the best and worst
 * single expert and the base as flat lines), beside `results.json`. Needs resvg's native module: a
 * bundle without @lora-examples/plot (the GPU machine) skips it and returns false.
 */
async function plotUnseen(table: Map<string, number[]>, categories: string[], ks: number[], backend: string) {
  const plot = await import('@lora-examples/plot').catch(() => null);
  if (!plot) return false;
  const unseenOf = (label: string) => (table.get(label) as number[])[0] as number;
  const singles = categories.map((c) => unseenOf(`expert: ${c}`));
  const flat = (name: string, v: number) => ({
    name,
    points: [ks[0], ks.at(-1)].map((x) => [x, v]) as [number, number][],
  });
  await plot.plotLines(
    {
      title: `Held-out 'fortunes' (unseen), ${categories.length} experts on fortune-llama (${backend})`,
      x: 'experts per token (Arrow top-k)',
      y: 'perplexity per token',
      points: true,
      series: [
        { name: 'Arrow', points: ks.map((k) => [k, unseenOf(`Arrow top-${k}`)]) },
        flat('uniform merge', unseenOf('uniform merge')),
        flat('best single expert', Math.min(...singles)),
        flat('worst single expert', Math.max(...singles)),
        flat('base', unseenOf('base')),
      ],
    },
    join(RESULTS, 'arrow-topk'),
  );
  return true;
}

/** LORA_ARROW_PLOT_FROM=results.json: only the plot, from a run's record (e.g. one made on the GPU machine). */
async function plotFrom(file: string) {
  const r = JSON.parse(readFileSync(file, 'utf8')) as {
    categories: string[];
    backend: string;
    perplexity: Record<string, number[]>;
  };
  const ks = Object.keys(r.perplexity)
    .filter((k) => k.startsWith('Arrow top-'))
    .map((k) => Number(k.slice('Arrow top-'.length)));
  if (!(await plotUnseen(new Map(Object.entries(r.perplexity)), r.categories, ks, r.backend)))
    throw new Error('@lora-examples/plot is not available here');
  console.log(`plotted ${file} into ${join(RESULTS, 'arrow-topk')}.svg/.png`);
}

if (process.env.LORA_ARROW_PLOT_FROM) await plotFrom(process.env.LORA_ARROW_PLOT_FROM);
else await main();
