/**
 * `npm run experiment -w @lora-examples/loraga-init -- [--model DIR] [--data DIR] [--steps N] [--seeds 0,1,2]`
 * LoRA-GA against default LoRA on fortune-llama's task (the `fortunes` category it never saw in
 * pretraining): writes results/convergence.json, results/train-loss.{svg,png}, results/heldout-loss.{svg,png}
 * and prints the table the README shows. LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default wasm).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { plotLines } from '@lora-examples/plot';
import { loadTokenizer } from '@lora/models';
import { initBackend } from '@lora/tensor';
import { type ConvergenceOptions, type Run, runConvergence, smooth, stepsToReach } from './convergence';

// run from .bench/ (bundled) or src/: the example's folder is one up either way
const here = join(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: join(here, '..', 'fortune-llama', 'model') },
    data: { type: 'string', default: join(here, '..', 'fortune-llama', 'data') },
    steps: { type: 'string', default: '80' },
    seeds: { type: 'string', default: '0,1,2' },
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
  lr: 2e-3,
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  gradientBatches: 8,
  seeds: values.seeds.split(',').map(Number),
  evalEvery: 5,
  log: (l) => console.log(l),
};
console.log(
  `backend ${info.name}; ${o.train.length} training / ${o.heldout.length} held-out entries; ${o.steps} steps of ${o.batchSize}, lr ${o.lr} (cosine, 5 warm-up), r ${o.r}, alpha ${o.loraAlpha}, all projections; LoRA-GA: ${o.gradientBatches} batches, ArB2r + stable (PEFT's defaults)`,
);
const t0 = performance.now();
const runs = await runConvergence(o);
const minutes = (performance.now() - t0) / 60000;

const methods = [
  ['lora', 'default LoRA (Kaiming A, zero B)'],
  ['lora_ga', 'LoRA-GA (ArB2r, stable)'],
] as const;
const of = (m: string) => runs.filter((r) => r.method === m);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const meanCurve = (rs: Run[], pick: (r: Run) => Array<[number, number]>) =>
  pick(rs[0] as Run).map(([s], i) => [s, mean(rs.map((r) => (pick(r)[i] as [number, number])[1]))]) as Array<
    [number, number]
  >;
const trainCurve = (r: Run): Array<[number, number]> => smooth(r.losses, 5).map((v, i) => [i + 1, v]);

const rows: string[] = [];
rows.push(
  "| seed | method | held-out loss at 0 / 20 / 40 / end | steps to default LoRA's final held-out loss | steps to its final training loss (5-step mean) | init s | train s |",
);
rows.push('| --- | --- | --- | --- | --- | --- | --- |');
const reach: Record<string, number[]> = { heldout: [], train: [] };
for (const seed of o.seeds) {
  const base = runs.find((r) => r.method === 'lora' && r.seed === seed) as Run;
  const target = (base.heldout.at(-1) as [number, number])[1];
  const trainTarget = trainCurve(base).at(-1)?.[1] as number;
  for (const [m, label] of methods) {
    const r = runs.find((x) => x.method === m && x.seed === seed) as Run;
    const at = (s: number) => r.heldout.find(([x]) => x === s)?.[1].toFixed(3) ?? '–';
    const h = stepsToReach(r.heldout, target);
    const t = stepsToReach(trainCurve(r), trainTarget);
    if (m === 'lora_ga') {
      reach.heldout?.push(h ?? Number.NaN);
      reach.train?.push(t ?? Number.NaN);
    }
    rows.push(
      `| ${seed} | ${label} | ${at(0)} / ${at(20)} / ${at(40)} / ${(r.heldout.at(-1) as [number, number])[1].toFixed(3)} | ${h ?? 'not reached'} | ${t ?? 'not reached'} | ${r.initSeconds.toFixed(1)} | ${r.trainSeconds.toFixed(1)} |`,
    );
  }
}
console.log(`\n${rows.join('\n')}\n`);
console.log(
  `LoRA-GA reached default LoRA's final held-out loss (step ${o.steps}) at step ${reach.heldout?.join(', ')} and its final training loss at step ${reach.train?.join(', ')} (seeds ${o.seeds.join(', ')}); ${minutes.toFixed(1)} min in all`,
);

await mkdir(values.out, { recursive: true });
await writeFile(
  join(values.out, 'convergence.json'),
  `${JSON.stringify({ date: new Date().toISOString().slice(0, 10), backend: info.name, model: values.model, options: { ...o, train: o.train.length, heldout: o.heldout.length, log: undefined }, runs }, null, 1)}\n`,
);
await plotLines(
  {
    title: `training loss (5-step mean, mean of ${o.seeds.length} seeds)`,
    x: 'step',
    y: 'loss',
    series: methods.map(([m, label]) => ({ name: label, points: meanCurve(of(m), trainCurve) })),
  },
  join(values.out, 'train-loss'),
);
await plotLines(
  {
    title: `held-out loss (mean of ${o.seeds.length} seeds)`,
    x: 'step',
    y: 'loss',
    points: true,
    series: methods.map(([m, label]) => ({ name: label, points: meanCurve(of(m), (r) => r.heldout) })),
  },
  join(values.out, 'heldout-loss'),
);
console.log(`wrote ${join(values.out, 'convergence.json')}, train-loss.{svg,png}, heldout-loss.{svg,png}`);
