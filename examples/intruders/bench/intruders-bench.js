// @ts-check
/**
 * Our side of the intruders benchmark: `reduceIntruderDimension` on the base and adapter that
 * `peer_intruders.py` built and timed PEFT on (read from its --dir), the same default settings, on
 * the active backend; PEFT's per-layer intruder counts and new ΔW compared with ours; a table printed.
 *
 *   cold      a fresh WeightSvdCache: every base weight's SVD (the one full decomposition per weight),
 *             then W + ΔW's leading directions from it and the mitigation from stacked factors
 *   W cached  a second adapter (the same factors, loaded again) on the same base with the same cache:
 *             W's SVDs reused, everything per adapter computed again — what trying several adapters on
 *             one base costs after the first
 *   λ sweep   the first adapter again with mitigationLambda 0.5: W + ΔW's directions reused too (they
 *             do not depend on λ or ε), only the mitigation
 *
 * Usage (here):   python examples/intruders/bench/peer_intruders.py --model fortune --dir D --device cpu
 *                 node examples/intruders/bench/intruders-bench.js D        (LORA_BACKEND=cpu|wasm|webgpu, default cpu)
 * On the GPU machine: bundled by ../shared/device/pack, LORA_BACKEND=webgpu (see bench/device.sh).
 * OUT, when set, gets bench-<model>.json.
 */
import { writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadAdapter } from '@lora/core';
import { WeightSvdCache, reduceIntruderDimension } from '@lora/intruders';
import { LlamaForCausalLM } from '@lora/models';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { loadSafetensors } from '@lora/tensor/node';

const dir = process.argv[2] ?? process.env.INTRUDERS_DIR;
if (!dir) throw new Error('usage: intruders-bench.js <the folder peer_intruders.py wrote>');
const backendName = /** @type {import('@lora/tensor').BackendName} */ (process.env.LORA_BACKEND ?? 'cpu');
const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};
const info = await initBackend(backendName, { importers });
const peer = JSON.parse(await readFile(join(dir, 'peer.json'), 'utf8'));
const log = (/** @type {string} */ s) => process.stderr.write(`${s}\n`);
log(`backend ${info.name}${info.adapter ? ` (${info.adapter})` : ''}; base ${peer.base_dir}`);

const t = performance.now();
const base = await LlamaForCausalLM.fromPretrained(peer.base_dir);
const { model: peft } = await loadAdapter(base, peer.adapter_dir);
await loadAdapter(peft, peer.adapter_dir, { adapterName: 'second' });
log(`loaded in ${((performance.now() - t) / 1000).toFixed(1)} s`);

const cache = new WeightSvdCache();
/** @param {string} label @param {import('@lora/intruders').ReduceIntruderDimensionOptions} options */
async function timed(label, options) {
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  const report = await reduceIntruderDimension(peft, {
    ...options,
    svdCache: cache,
    loggingSink: null,
    // every layer, so that a run cut short by its time limit still says how far it got
    onProgress: (done, total, path) =>
      log(`  ${label}: ${done}/${total} ${path} ${((performance.now() - start) / 1000).toFixed(1)} s`),
  });
  const seconds = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu0);
  const cpuSeconds = (used.user + used.system) / 1e6;
  log(`${label}: ${seconds.toFixed(2)} s (process CPU ${cpuSeconds.toFixed(2)} s)`);
  return { label, seconds, cpuSeconds, report };
}
const cold = await timed('cold', { newAdapterName: 'ours' });
const stats = { ...cache.stats };
const wCached = await timed('W cached', { oldAdapterName: 'second', newAdapterName: 'ours_second' });
const sweep = await timed('λ sweep', { newAdapterName: 'ours_half', mitigationLambda: 0.5 });

// parity with PEFT: counts per layer, and the new ΔW = B·A of each layer (relative to its largest entry)
const reduced = await loadSafetensors(join(dir, 'peft-reduced.safetensors'));
let countsEqual = 0;
let worst = 0;
let worstAt = '';
const layers = [...peft.loraLayers()];
for (const r of cold.report.layers) {
  if ((peer.intruders[r.path] ?? -1) === r.intruders.length) countsEqual++;
  else
    log(
      `  counts differ at ${r.path}: PEFT ${peer.intruders[r.path]}, ours ${r.intruders.length} (cosines ${r.cosine.map((c) => c.toFixed(3)).join(' ')})`,
    );
  const layer = layers.find(([p]) => p === r.path)?.[1];
  const pa = reduced.tensors[`${r.path}.lora_A`];
  const pb = reduced.tensors[`${r.path}.lora_B`];
  if (!layer || !pa || !pb) throw new Error(`${r.path}: missing from PEFT's output`);
  const ours = tf.tidy(() => tf.matMul(layer.factorB('ours'), layer.factorA('ours')));
  const theirs = tf.tidy(() => tf.matMul(/** @type {tf.Tensor2D} */ (pb), /** @type {tf.Tensor2D} */ (pa)));
  const e = maxRelativeError(await ours.data(), await theirs.data());
  if (e > worst) [worst, worstAt] = [e, r.path];
  tf.dispose([ours, theirs]);
}
tf.dispose(Object.values(reduced.tensors));

const total = cold.report.layers.reduce((s, l) => s + l.intruders.length, 0);
const fmt = (/** @type {number[]} */ xs) => xs.map((x) => x.toFixed(2)).join(', ');
/** @type {[string, number, string][]} */
const rows = [
  ['PEFT `reduce_intruder_dimension` (median)', peer.median_s, `runs ${fmt(peer.runs_s)}; CPU ${fmt(peer.cpu_s)}`],
  ['ours, cold (W SVDs computed)', cold.seconds, `CPU ${cold.cpuSeconds.toFixed(2)}`],
  ['ours, W cached (2nd adapter, same base)', wCached.seconds, `CPU ${wCached.cpuSeconds.toFixed(2)}`],
  ['ours, λ sweep (2nd λ, same adapter)', sweep.seconds, `CPU ${sweep.cpuSeconds.toFixed(2)}`],
];
const table = [
  `### intruder reduction, ${peer.model === '123m' ? `123M-shaped Llama, ${peer.layers} decoder layers` : 'fortune-llama'}, r 16 on all seven targets (${cold.report.layers.length} layers)`,
  '',
  `peer: ${peer.peer} on ${peer.device} (${peer.torch_threads} threads); ours: ${info.name}${info.adapter ? ` (${info.adapter})` : ''}, Node ${process.version}`,
  '',
  '| run | wall s | × PEFT | process CPU s |',
  '| --- | --- | --- | --- |',
  ...rows.map(
    ([name, s, runs]) => `| ${name} | ${Number(s).toFixed(2)} | ${(Number(s) / peer.median_s).toFixed(2)}× | ${runs} |`,
  ),
  '',
  `parity: intruder counts equal on ${countsEqual}/${cold.report.layers.length} layers (PEFT ${peer.total_intruders} in all, ours ${total}); new ΔW max relative error ${worst.toExponential(2)} (${worstAt}); W SVDs computed ${stats.computed}, methods ${[...new Set(cold.report.layers.map((l) => l.method.replace(/\d+/g, '#')))].join(', ')}`,
];
console.log(table.join('\n'));
if (process.env.OUT)
  writeFileSync(
    join(process.env.OUT, `bench-${peer.model}.json`),
    JSON.stringify(
      {
        peer,
        backend: info,
        rows,
        cold: cold.seconds,
        wCached: wCached.seconds,
        sweep: sweep.seconds,
        countsEqual,
        layers: cold.report.layers.length,
        worst,
        worstAt,
        stats,
      },
      null,
      1,
    ),
  );
cache.dispose();
peft.dispose();
