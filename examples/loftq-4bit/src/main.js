// @ts-check
// The experiment of this example (see experiment.js and the README): every run, the memory table, the
// LoftQ error per step on fortune-llama's weights; results/results.json and the plots in results/.
//   node src/main.js [--steps N]     LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default: auto)
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { plotLines } from '@lora-examples/plot';
import { initBackend } from '@lora/tensor';
import { DEFAULTS, RUNS, loadTask, logitsErrors, loftqErrors, memoryByBits, runOne } from './experiment.js';

const { values } = parseArgs({ options: { steps: { type: 'string', default: String(DEFAULTS.steps) } } });
const steps = Number(values.steps);
const info = await initBackend(/** @type {'auto'} */ (process.env.LORA_BACKEND ?? 'auto'));
const out = join(import.meta.dirname, '..', 'results');
await mkdir(out, { recursive: true });
const log = (/** @type {string} */ line) => console.log(line);
log(`backend: ${info.name} (${info.adapter}); ${steps} steps per run, r ${DEFAULTS.r}, alpha ${DEFAULTS.loraAlpha}`);
const t0 = performance.now();

const task = await loadTask();
log('\nLoftQ: mean ||W - Q - B·A|| / ||W|| over the 42 target weights after each step (r 8)');
const errors = await loftqErrors(task.dir, { steps: 5, bits: [4, 3, 2] });
for (const e of errors.out) log(`  ${e.bits} bits: ${e.errors.map((x) => x.toFixed(4)).join('  ')}`);

log('\nlogits MSE against the float32 model, before training (PEFT’s LoftQ test metric)');
const mse = await logitsErrors(
  task,
  RUNS.filter((r) => r.bits !== 32),
  {},
);
for (const m of mse) log(`  ${m.name.padEnd(20)} ${m.mse.toExponential(3)}`);

log('\nbytes held');
const memory = await memoryByBits(task.dir);
for (const m of memory)
  log(
    `  ${String(m.bits).padStart(2)} bits: model ${(m.modelBytes / 2 ** 20).toFixed(2)} MiB (backend: ${(m.backendBytes / 2 ** 20).toFixed(2)} MiB), the 42 target Linear weights ${(m.linearBytes / 2 ** 20).toFixed(3)} MiB`,
  );

log('\nruns');
const runs = [];
for (const spec of RUNS) runs.push(await runOne(task, spec, { steps, log }));

await writeFile(
  join(out, 'results.json'),
  `${JSON.stringify({ backend: info.name, date: new Date().toISOString().slice(0, 10), settings: { ...DEFAULTS, steps }, errors, mse, memory, runs }, null, 1)}\n`,
);
await plotLines(
  {
    title: 'LoRA on fortune-llama over float32, NF4 and 2-bit bases (training loss)',
    x: 'step',
    y: 'loss',
    series: runs.map((r) => ({
      name: r.name,
      points: r.losses.map((l, i) => /** @type {[number, number]} */ ([i + 1, l])),
    })),
  },
  join(out, 'loss'),
);
await plotLines(
  {
    title: 'LoftQ on fortune-llama’s 42 target weights: mean ||W − Q − BA|| / ||W|| (r 8)',
    x: 'alternating step',
    y: 'relative error',
    logY: true,
    points: true,
    series: errors.out.map((e) => ({
      name: `${e.bits} bits`,
      points: e.errors.map((x, i) => /** @type {[number, number]} */ ([i + 1, x])),
    })),
  },
  join(out, 'loftq-error'),
);
log('\n| run | held-out perplexity before → after | first → last loss | base held | time |');
log('| --- | --- | --- | --- | --- |');
for (const r of runs)
  log(
    `| ${r.name} | ${r.pplStart.toFixed(2)} → ${r.pplEnd.toFixed(2)} | ${r.losses[0]?.toFixed(3)} → ${r.losses.at(-1)?.toFixed(3)} | ${(r.baseBytes / 2 ** 20).toFixed(2)} MiB | ${r.seconds.toFixed(0)} s |`,
  );
log(
  `\nwrote ${out}/results.json, loss.svg/.png, loftq-error.svg/.png (${((performance.now() - t0) / 1000).toFixed(0)} s)`,
);
