// @ts-check
// The intruders experiment in full: `npm run start -w @lora-examples/intruders` (after `npm run build`).
// Writes results/lambda.json and results/lambda.{svg,png}; README.md quotes them.
//   node src/main.js [--steps N]        LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default: auto)
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '@lora/tensor';
import { plotLines } from '@lora-examples/plot';
import { DEFAULTS, runExperiment } from './experiment.js';

const { values } = parseArgs({ options: { steps: { type: 'string', default: String(DEFAULTS.steps) } } });
const steps = Number(values.steps);
if (!Number.isInteger(steps) || steps < 1) {
  console.error(`--steps must be a positive integer, got '${values.steps}'`);
  process.exit(2);
}
const info = await initBackend(/** @type {'auto'} */ (process.env.LORA_BACKEND ?? 'auto'));
console.log(`backend: ${info.name} (${info.adapter})`);
const result = await runExperiment({ steps });
const dir = join(import.meta.dirname, '..', 'results');
await mkdir(dir, { recursive: true });
await writeFile(
  join(dir, 'lambda.json'),
  `${JSON.stringify({ backend: info.name, date: new Date().toISOString(), ...result }, null, 1)}\n`,
);
const along = (/** @type {(r: (typeof result.rows)[number]) => number} */ f) =>
  result.rows.map((r) => /** @type {[number, number]} */ ([r.lambda, f(r)]));
const flat = (/** @type {number} */ y) => result.rows.map((r) => /** @type {[number, number]} */ ([r.lambda, y]));
await plotLines(
  {
    title: `fortune-llama + a task LoRA (r ${result.options.r}): intruder reduction, topK ${result.options.topK}, ε ${result.options.thresholdEpsilon}`,
    x: 'mitigationLambda (fraction of each intruder direction kept)',
    y: 'perplexity',
    points: true,
    series: [
      { name: 'pretraining text, reduced adapter', points: along((r) => r.pretrain) },
      { name: 'pretraining text, base model', points: flat(result.base.pretrain) },
      { name: 'task, reduced adapter', points: along((r) => r.task) },
      { name: 'task, base model', points: flat(result.base.task) },
    ],
  },
  join(dir, 'lambda'),
);
console.log(`wrote ${join(dir, 'lambda.json')} and lambda.svg / lambda.png`);
