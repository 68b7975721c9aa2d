// @ts-check
// The intruders experiment in full: `npm run start -w @lora-examples/intruders` (after `npm run build`).
// Writes results/lambda.json and results/lambda.{svg,png}; README.md quotes them.
//   node src/main.js [--steps N]        LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default: auto)
//   node src/main.js --from run.json    only the plot, from a run's JSON (e.g. bench/experiment-device.js's
//                                       on the GPU machine, where resvg's native module is not bundled)
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '@lora/tensor';
import { plotLines } from '@lora-examples/plot';
import { DEFAULTS, runExperiment } from './experiment.js';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: String(DEFAULTS.steps) },
    from: { type: 'string' },
    // fewer pretraining entries measured (all 558 by default), several thresholds: 0.5,0.9
    'pretrain-entries': { type: 'string' },
    epsilons: { type: 'string' },
  },
});
const dir = join(import.meta.dirname, '..', 'results');
await mkdir(dir, { recursive: true });
const json = join(dir, 'lambda.json');
if (values.from) {
  if (resolve(values.from) !== resolve(json)) await copyFile(values.from, json);
} else {
  const steps = Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1) {
    console.error(`--steps must be a positive integer, got '${values.steps}'`);
    process.exit(2);
  }
  const info = await initBackend(/** @type {'auto'} */ (process.env.LORA_BACKEND ?? 'auto'));
  console.log(`backend: ${info.name} (${info.adapter})`);
  const result = await runExperiment({
    steps,
    ...(values['pretrain-entries'] ? { pretrainEntries: Number(values['pretrain-entries']) } : {}),
    ...(values.epsilons ? { thresholdEpsilons: values.epsilons.split(',').map(Number) } : {}),
  });
  await writeFile(json, `${JSON.stringify({ backend: info, date: new Date().toISOString(), ...result }, null, 1)}\n`);
}
/** @type {Awaited<ReturnType<typeof runExperiment>>} */
const result = JSON.parse(await readFile(json, 'utf8'));
const epsilons = [...new Set(result.rows.map((r) => r.epsilon))];
/** @param {number} e @param {(r: (typeof result.rows)[number]) => number} f @returns {Array<[number, number]>} */
const along = (e, f) => result.rows.filter((r) => r.epsilon === e).map((r) => [r.lambda, f(r)]);
/** @param {number} y @returns {Array<[number, number]>} */
const flat = (y) => [...new Set(result.rows.map((r) => r.lambda))].map((x) => [x, y]);
// short names: the legend cuts labels past ~20 characters
const tag = (/** @type {number} */ e) => (epsilons.length > 1 ? ` ε ${e}` : ' reduced');
await plotLines(
  {
    title: `fortune-llama + a task LoRA (r ${result.options.r}): intruder reduction, topK ${result.options.topK}, ε ${epsilons.join(' / ')}`,
    x: 'mitigationLambda (fraction of each intruder direction kept)',
    y: 'perplexity (log scale)',
    logY: true,
    points: true,
    series: [
      ...epsilons.map((e) => ({
        name: `pretraining${tag(e)}`,
        points: along(e, (r) => r.pretrain),
      })),
      { name: 'pretraining, base', points: flat(result.base.pretrain) },
      ...epsilons.map((e) => ({ name: `task${tag(e)}`, points: along(e, (r) => r.task) })),
      { name: 'task, base', points: flat(result.base.task) },
    ],
  },
  join(dir, 'lambda'),
);
console.log(`wrote ${json} and lambda.svg / lambda.png`);
