/**
 * `npm run experiment -w @lora-examples/loraga-init -- [--model DIR] [--data DIR] [--steps N] [--seeds 0,1,2]
 *   [--arms lora,lora_ga] [--name convergence]`
 * LoRA-GA against default LoRA on fortune-llama's task (the `fortunes` category it never saw in
 * pretraining). An arm is a method, optionally at its own learning rate (`lora@5e-3`); the first arm is
 * the reference whose final losses the others are timed to. Writes results/<name>.json,
 * results/<name>-train-loss.{svg,png} and results/<name>-heldout-loss.{svg,png}, and prints the table
 * the README shows. LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default wasm).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { plotLines } from '@lora-examples/plot';
import { loadTokenizer } from '@lora/models';
import { initBackend } from '@lora/tensor';
import {
  type Arm,
  type ConvergenceOptions,
  type Method,
  type Run,
  runConvergence,
  smooth,
  stepsToReach,
} from './convergence';

// run from .bench/ (bundled) or src/: the example's folder is one up either way
const here = join(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: join(here, '..', 'fortune-llama', 'model') },
    data: { type: 'string', default: join(here, '..', 'fortune-llama', 'data') },
    steps: { type: 'string', default: '80' },
    seeds: { type: 'string', default: '0,1,2' },
    lr: { type: 'string', default: '2e-3' },
    arms: { type: 'string', default: 'lora,lora_ga' },
    name: { type: 'string', default: 'convergence' },
    // report only: the runs of earlier invocations (results/<name>.json files, e.g. one seed each, run side by side)
    merge: { type: 'string' },
    out: { type: 'string', default: join(here, 'results') },
  },
});

/** The entries of a fortune file: texts between lines holding only `%`. */
function entries(text: string): string[] {
  return text
    .replace(/\r\n/g, '\n')
    .split(/^%$/m)
    .map((e) => e.replace(/^\n+|\n+$/g, ''))
    .filter((e) => e.trim().length > 0);
}

const LABELS: Record<Method, string> = { lora: 'LoRA', lora_ga: 'LoRA-GA' };
const arms: Arm[] = values.arms.split(',').map((a) => {
  const [method, lr] = a.split('@') as [Method, string | undefined];
  if (!(method in LABELS)) throw new Error(`--arms: unknown method '${method}' (lora, lora_ga)`);
  return lr === undefined ? { method } : { method, lr: Number(lr) };
});

const info = await initBackend((process.env.LORA_BACKEND ?? 'wasm') as 'wasm');
const tokenizer = await loadTokenizer(values.model);
// the tokenizer puts <|endoftext|> (id 0) before each text; it ends the entry too, as in pretraining
const encode = (t: string) => [...tokenizer.encode(t).ids, 0];
const read = async (f: string) => entries(await readFile(join(values.data, f), 'utf8')).map(encode);
const o: ConvergenceOptions = {
  modelDir: values.model,
  train: await read('fortunes.train.txt'),
  heldout: await read('fortunes.heldout.txt'),
  steps: Number(values.steps),
  batchSize: 16,
  lr: Number(values.lr),
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  gradientBatches: 8,
  seeds: values.seeds.split(',').map(Number),
  evalEvery: 5,
  log: (l) => console.log(l),
};
console.log(
  `backend ${info.name}; ${o.train.length} training / ${o.heldout.length} held-out entries; ${o.steps} steps of ${o.batchSize} (AdamW, cosine, 5 warm-up, clip 1), r ${o.r}, alpha ${o.loraAlpha}, all projections; LoRA-GA: ${o.gradientBatches} batches, ArB2r + stable (PEFT's defaults); arms ${values.arms} (lr ${o.lr} unless given)`,
);
const t0 = performance.now();
let runs: Run[];
if (values.merge) {
  runs = [];
  for (const f of values.merge.split(','))
    runs.push(...(JSON.parse(await readFile(f, 'utf8')) as { runs: Run[] }).runs);
  o.seeds = [...new Set(runs.map((r) => r.seed))].sort((a, b) => a - b);
} else runs = await runConvergence(o, arms);
const minutes = (performance.now() - t0) / 60000;

const armLr = (a: Arm) => a.lr ?? o.lr;
// short enough for the plots' legend (Vega cuts labels at 160 px): 'LoRA, lr 2e-3' (default LoRA init)
const label = (a: Arm) => `${LABELS[a.method]}, lr ${armLr(a).toExponential()}`;
const ofArm = (a: Arm) => runs.filter((r) => r.method === a.method && r.lr === armLr(a));
const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
const meanCurve = (rs: Run[], pick: (r: Run) => Array<[number, number]>) =>
  pick(rs[0] as Run).map(([s], i) => [s, mean(rs.map((r) => (pick(r)[i] as [number, number])[1]))]) as Array<
    [number, number]
  >;
const trainCurve = (r: Run): Array<[number, number]> => smooth(r.losses, 5).map((v, i) => [i + 1, v]);
const final = (c: Array<[number, number]>) => (c.at(-1) as [number, number])[1];

const ref = arms[0] as Arm;
const rows = [
  `| seed | arm | held-out loss at step 0 / 10 / 20 / 40 / ${o.steps} | steps to the reference's final held-out loss | steps to its final training loss (5-step mean) | init s | train s |`,
  '| --- | --- | --- | --- | --- | --- | --- |',
];
const reached: string[] = [];
for (const seed of o.seeds) {
  const base = ofArm(ref).find((r) => r.seed === seed) as Run;
  for (const a of arms) {
    const r = ofArm(a).find((x) => x.seed === seed) as Run;
    const at = (s: number) => r.heldout.find(([x]) => x === s)?.[1].toFixed(3) ?? '–';
    const h = stepsToReach(r.heldout, final(base.heldout));
    const t = stepsToReach(trainCurve(r), final(trainCurve(base)));
    if (a !== ref)
      reached.push(`${label(a)}, seed ${seed}: held-out at step ${h ?? '–'}, training at step ${t ?? '–'}`);
    rows.push(
      `| ${seed} | ${label(a)} | ${at(0)} / ${at(10)} / ${at(20)} / ${at(40)} / ${final(r.heldout).toFixed(3)} | ${h ?? 'not reached'} | ${t ?? 'not reached'} | ${r.initSeconds.toFixed(1)} | ${r.trainSeconds.toFixed(1)} |`,
    );
  }
}
console.log(`\n${rows.join('\n')}\n`);
console.log(
  `reference: ${label(ref)} at step ${o.steps}\n${reached.join('\n')}\n${values.merge ? `merged from ${values.merge}` : `${minutes.toFixed(1)} min in all`}`,
);

await mkdir(values.out, { recursive: true });
const file = (suffix: string) => join(values.out, `${values.name}${suffix}`);
await writeFile(
  file('.json'),
  `${JSON.stringify({ date: new Date().toISOString().slice(0, 10), backend: info.name, model: values.model, arms, options: { ...o, train: o.train.length, heldout: o.heldout.length, log: undefined }, runs }, null, 1)}\n`,
);
const n = o.seeds.length;
await plotLines(
  {
    title: `training loss (5-step mean${n > 1 ? `, mean of ${n} seeds` : ''})`,
    x: 'step',
    y: 'loss',
    series: arms.map((a) => ({ name: label(a), points: meanCurve(ofArm(a), trainCurve) })),
  },
  file('-train-loss'),
);
await plotLines(
  {
    title: `held-out loss${n > 1 ? ` (mean of ${n} seeds)` : ''}`,
    x: 'step',
    y: 'loss',
    points: true,
    series: arms.map((a) => ({ name: label(a), points: meanCurve(ofArm(a), (r) => r.heldout) })),
  },
  file('-heldout-loss'),
);
console.log(`wrote ${file('.json')}, ${values.name}-train-loss.{svg,png}, ${values.name}-heldout-loss.{svg,png}`);
