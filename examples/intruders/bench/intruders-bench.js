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
import { existsSync, writeFileSync } from 'node:fs';
import { PerformanceObserver } from 'node:perf_hooks';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadAdapter } from '@lora/core';
import { WeightSvdCache, reduceIntruderDimension } from '@lora/intruders';
import { LlamaForCausalLM } from '@lora/models';
import { dispatchCacheStats, initBackend, maxRelativeError } from '@lora/tensor';
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

// what a run costs besides its own work: garbage collection (ms, from 'gc' entries), shader
// pipelines compiled (tfjs-webgpu's pipeline cache), the dispatch cache's misses, the JS heap
let gcMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcMs += e.duration;
}).observe({ entryTypes: ['gc'] });
const pipelines = () => {
  const b = /** @type {{ pipelineCache?: object }} */ (/** @type {unknown} */ (tf.backend()));
  return b.pipelineCache ? Object.keys(b.pipelineCache).length : 0;
};
// the device's object creations, counted and timed (webgpu only): buffers, bind groups, pipelines
/** @type {Record<string, { calls: number; ms: number }>} */
const made = {};
const device = /** @type {Record<string, unknown> | undefined} */ (
  /** @type {{ device?: Record<string, unknown> }} */ (/** @type {unknown} */ (tf.backend())).device
);
if (device)
  for (const name of ['createBuffer', 'createBindGroup', 'createComputePipeline']) {
    const f = /** @type {(...args: unknown[]) => unknown} */ (device[name]);
    if (typeof f !== 'function') continue;
    const entry = (made[name] = { calls: 0, ms: 0 });
    device[name] = (/** @type {unknown[]} */ ...args) => {
      const t0 = performance.now();
      try {
        return f.apply(device, args);
      } finally {
        entry.calls++;
        entry.ms += performance.now() - t0;
      }
    };
  }
const madeNow = () => Object.fromEntries(Object.entries(made).map(([k, v]) => [k, { ...v }]));
const overheads = () => ({
  made: madeNow(),
  gcMs,
  pipelines: pipelines(),
  bindGroupMisses: dispatchCacheStats.bindGroupMisses,
  bindGroupHits: dispatchCacheStats.bindGroupHits,
  uniformMisses: dispatchCacheStats.uniformMisses,
  heapMB: process.memoryUsage().heapUsed / 2 ** 20,
});

const cache = new WeightSvdCache();
/**
 * @param {string} label @param {import('@lora/intruders').ReduceIntruderDimensionOptions} options
 * @param {WeightSvdCache} [svdCache] the shared cache unless given
 */
async function timed(label, options, svdCache = cache) {
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  const o0 = overheads();
  const report = await reduceIntruderDimension(peft, {
    ...options,
    svdCache,
    loggingSink: null,
    // every layer, so that a run cut short by its time limit still says how far it got
    onProgress: (done, total, path) =>
      log(`  ${label}: ${done}/${total} ${path} ${((performance.now() - start) / 1000).toFixed(1)} s`),
  });
  const seconds = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu0);
  const cpuSeconds = (used.user + used.system) / 1e6;
  const o1 = overheads();
  const overhead = {
    gcMs: o1.gcMs - o0.gcMs,
    pipelinesCompiled: o1.pipelines - o0.pipelines,
    bindGroupMisses: o1.bindGroupMisses - o0.bindGroupMisses,
    bindGroupHits: o1.bindGroupHits - o0.bindGroupHits,
    uniformMisses: o1.uniformMisses - o0.uniformMisses,
    heapMB: o1.heapMB,
    /** @type {Record<string, { calls: number; ms: number }>} */
    made: Object.fromEntries(
      Object.entries(o1.made).map(([k, v]) => [
        k,
        { calls: v.calls - (o0.made[k]?.calls ?? 0), ms: v.ms - (o0.made[k]?.ms ?? 0) },
      ]),
    ),
  };
  const madeText = Object.entries(overhead.made)
    .map(([k, v]) => `${k} ${v.calls} (${v.ms.toFixed(0)} ms)`)
    .join(', ');
  log(
    `${label}: ${seconds.toFixed(2)} s (process CPU ${cpuSeconds.toFixed(2)} s; GC ${overhead.gcMs.toFixed(0)} ms, ${overhead.pipelinesCompiled} pipelines compiled, bind groups ${overhead.bindGroupMisses} made / ${overhead.bindGroupHits} reused, ${overhead.uniformMisses} uniform blocks made, heap ${overhead.heapMB.toFixed(0)} MB${madeText ? `; ${madeText}` : ''})`,
  );
  return { label, seconds, cpuSeconds, report, overhead };
}
const cold = await timed('cold', { newAdapterName: 'ours' });
const stats = { ...cache.stats };
const wCached = await timed('W cached', { oldAdapterName: 'second', newAdapterName: 'ours_second' });
const sweep = await timed('λ sweep', { newAdapterName: 'ours_half', mitigationLambda: 0.5 });
// cold again with fresh caches, the shaders compiled: the default (layers analysed at once on a GPU) and one at a time
/** @param {string} label @param {import('@lora/intruders').ReduceIntruderDimensionOptions} options */
const coldAgain = async (label, options) => {
  const fresh = new WeightSvdCache();
  try {
    return await timed(label, options, fresh);
  } finally {
    fresh.dispose();
  }
};
const coldWarm = await coldAgain('cold again', { newAdapterName: 'ours_again' });
const coldOne = await coldAgain('cold again, concurrency 1', { newAdapterName: 'ours_one', concurrency: 1 });

// parity with PEFT: counts per layer, and the new ΔW = B·A of each layer (relative to its largest entry)
const reduced = await loadSafetensors(join(dir, 'peft-reduced.safetensors'));
// PEFT's algorithm in float64 (peer_intruders.py --reference64), where the peer wrote it
const ref64 = existsSync(join(dir, 'ref64.safetensors')) ? await loadSafetensors(join(dir, 'ref64.safetensors')) : null;
/** @type {Record<string, { ours: number; peft: number; oursVs64?: number; peftVs64?: number }>} */
const perLayer = {};
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
  const oursValues = await ours.data();
  const theirsValues = await theirs.data();
  const e = maxRelativeError(oursValues, theirsValues);
  if (e > worst) [worst, worstAt] = [e, r.path];
  perLayer[r.path] = { ours: e, peft: 0 };
  const exact = ref64?.tensors[`${r.path}.BA`];
  if (exact) {
    const exactValues = await exact.data();
    perLayer[r.path] = {
      ours: e,
      peft: 0,
      oursVs64: maxRelativeError(oursValues, exactValues),
      peftVs64: maxRelativeError(theirsValues, exactValues),
    };
  }
  tf.dispose([ours, theirs]);
}
tf.dispose(Object.values(reduced.tensors));
if (ref64) tf.dispose(Object.values(ref64.tensors));
const with64 = Object.entries(perLayer).filter(([, v]) => v.oursVs64 !== undefined);
/** @returns {[string, number]} the layer with the largest error against the float64 reference, and the error */
const worstOf = (/** @type {'oursVs64' | 'peftVs64'} */ key) => {
  /** @type {[string, number]} */
  let best = ['', 0];
  for (const [p, v] of with64) if ((v[key] ?? 0) > best[1]) best = [p, v[key] ?? 0];
  return best;
};

const total = cold.report.layers.reduce((s, l) => s + l.intruders.length, 0);
/** wall seconds per phase, summed over layers (`seconds` of each layer's report) */
const phaseSums = (/** @type {typeof cold} */ run) => {
  let analysis = 0;
  let mitigation = 0;
  /** @type {Record<string, number>} */
  const sums = {};
  for (const l of run.report.layers) {
    analysis += l.seconds.analysis;
    mitigation += l.seconds.mitigation;
    for (const [k, v] of Object.entries(l.seconds.phases)) sums[k] = (sums[k] ?? 0) + v;
  }
  sums.analysis = analysis;
  sums.mitigation = mitigation;
  return Object.entries(sums)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ');
};
const fmt = (/** @type {number[]} */ xs) => xs.map((x) => x.toFixed(2)).join(', ');
/** @type {[string, number, string][]} */
const rows = [
  ['PEFT `reduce_intruder_dimension` (median)', peer.median_s, `runs ${fmt(peer.runs_s)}; CPU ${fmt(peer.cpu_s)}`],
  ['ours, cold (fresh cache)', cold.seconds, `CPU ${cold.cpuSeconds.toFixed(2)}`],
  ['ours, 2nd adapter on the same base (same cache)', wCached.seconds, `CPU ${wCached.cpuSeconds.toFixed(2)}`],
  ['ours, λ sweep (2nd λ, same adapter)', sweep.seconds, `CPU ${sweep.cpuSeconds.toFixed(2)}`],
  ['ours, cold again (fresh cache, shaders compiled)', coldWarm.seconds, `CPU ${coldWarm.cpuSeconds.toFixed(2)}`],
  ['ours, cold again, one layer at a time (`concurrency: 1`)', coldOne.seconds, `CPU ${coldOne.cpuSeconds.toFixed(2)}`],
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
  ...(with64.length
    ? [
        `against PEFT's algorithm in float64 (peer, ${with64.length} layers): ours max relative error ${worstOf('oursVs64')[1].toExponential(2)} (${worstOf('oursVs64')[0]}), PEFT's float32 ${worstOf('peftVs64')[1].toExponential(2)} (${worstOf('peftVs64')[0]}); W + ΔW's σ₉…σ₁₂ at ${worstAt}: ${(
          peer.svals64?.[worstAt] ?? []
        )
          .slice(8, 12)
          .map((/** @type {number} */ x) => x.toFixed(5))
          .join(', ')}`,
        '',
      ]
    : []),
  `phases (wall s summed over layers; the rest of a run is reading factors and writing the new adapter): cold: ${phaseSums(cold)}; 2nd adapter: ${phaseSums(wCached)}; λ sweep: ${phaseSums(sweep)}; cold, one at a time: ${phaseSums(coldOne)} (with layers at once the phases overlap, so their sums exceed the wall time)`,
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
        overheads: Object.fromEntries([cold, wCached, sweep, coldWarm, coldOne].map((r) => [r.label, r.overhead])),
        cold: cold.seconds,
        wCached: wCached.seconds,
        sweep: sweep.seconds,
        countsEqual,
        layers: cold.report.layers.length,
        worst,
        worstAt,
        stats,
        perLayer,
        methods: Object.fromEntries(cold.report.layers.map((l) => [l.path, l.method])),
        methodsCached: Object.fromEntries(wCached.report.layers.map((l) => [l.path, l.method])),
      },
      null,
      1,
    ),
  );
cache.dispose();
peft.dispose();
