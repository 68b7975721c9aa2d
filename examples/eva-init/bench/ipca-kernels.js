// @ts-check
// EVA's incremental-PCA update alone, at the GPU benchmark's shapes (issue 15): 36 layers of d 768 and
// 12 of d 2560 (the 123.7M Llama's hook layers: q/k/v, o, gate/up inputs and down inputs of 12 blocks),
// batches of 2048 rows, k 32 components (r 16 · rho 2, q 64), random data. Times one update per batch
// (wall, including its read-backs) with the q×q factorisations on the backend and on the host, then
// profiles one update on the backend path kernel by kernel (tf.profile: GPU time per kernel where the
// device has timestamp queries). No peer: it says where the PCA's time goes, not how it compares.
//
//   node ipca-kernels.js [--backend webgpu] [--rows 2048] [--steps 4] [--scale 1]
//   (--scale S divides the layer counts by S, to keep a software-webgpu run short)
// Imports the package's source (IpcaUpdater is internal); bundled for the GPU machine like eva-bench.js.
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { IpcaUpdater, LayerPca } from '../../../packages/eva/src/incremental-pca';
import { startBackend } from '../src/backend.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'webgpu' },
    rows: { type: 'string', default: '2048' },
    steps: { type: 'string', default: '4' },
    scale: { type: 'string', default: '1' },
    modes: { type: 'string', default: 'host,backend' },
  },
});
const backend = /** @type {'webgpu' | 'wasm' | 'cpu'} */ (values.backend);
const info = await startBackend(backend, dirname(new URL(import.meta.url).pathname));
const n = Number(values.rows);
const steps = Number(values.steps);
const scale = Number(values.scale);
const k = 32;
const shapes = [
  { count: Math.max(1, Math.round(36 / scale)), d: 768 },
  { count: Math.max(1, Math.round(12 / scale)), d: 2560 },
];
const limits = /** @type {any} */ (tf.backend()).device?.limits;
console.log(
  `device limits: maxComputeWorkgroupStorageSize ${limits?.maxComputeWorkgroupStorageSize}, maxStorageBufferBindingSize ${limits?.maxStorageBufferBindingSize}, maxBufferSize ${limits?.maxBufferSize}`,
);
console.log(
  `backend ${info.name} (${info.adapter}); ${shapes.map((s) => `${s.count} × [${n}, ${s.d}]`).join(' + ')}; k ${k}`,
);

/** A batch per layer: Gaussian rows with a decaying column scale (a spectrum like a layer input's). */
function batchFor(/** @type {number} */ d, /** @type {number} */ seed) {
  return tf.tidy(() => {
    const scaleCols = tf.pow(tf.scalar(0.995), tf.range(0, d));
    return /** @type {tf.Tensor2D} */ (tf.mul(tf.randomNormal([n, d], 0, 1, 'float32', seed), scaleCols));
  });
}

/** @type {Record<string, unknown>} */
const result = { backend: `${info.name} (${info.adapter})`, rows: n, k, shapes };
for (const mode of /** @type {string} */ (values.modes).split(',')) {
  const updater = new IpcaUpdater({ tau: 0.99, factorOnBackend: mode === 'backend' });
  const layers = shapes.flatMap((s, g) => Array.from({ length: s.count }, (_, i) => new LayerPca(`g${g}.${i}`, k)));
  const dOf = shapes.flatMap((s) => Array.from({ length: s.count }, () => s.d));
  const times = [];
  for (let step = 0; step <= steps; step++) {
    const xs = layers.map((_, i) => batchFor(/** @type {number} */ (dOf[i]), 1000 * step + i));
    await Promise.all(xs.map((x) => x.data().then(() => undefined))); // inputs ready: time the update only
    const t0 = performance.now();
    await updater.update(layers.map((layer, i) => ({ layer, x: /** @type {tf.Tensor2D} */ (xs[i]) })));
    times.push((performance.now() - t0) / 1000);
    tf.dispose(xs);
  }
  // step 0 is the first batch (no previous components) and compiles the programs: reported apart
  const later = times.slice(1);
  const mean = later.reduce((a, b) => a + b, 0) / later.length;
  result[mode] = { firstSeconds: times[0], meanSeconds: mean, seconds: later };
  console.log(
    `${mode}: first update ${times[0]?.toFixed(3)} s, then ${later.map((t) => t.toFixed(3)).join(' ')} s (mean ${mean.toFixed(3)})`,
  );
  if (mode === 'backend') {
    const xs = layers.map((_, i) => batchFor(/** @type {number} */ (dOf[i]), 99_000 + i));
    const prof = await tf.profile(() =>
      updater.update(layers.map((layer, i) => ({ layer, x: /** @type {tf.Tensor2D} */ (xs[i]) }))),
    );
    tf.dispose(xs);
    /** @type {Record<string, { count: number, ms: number }>} */
    const byName = {};
    for (const kern of prof.kernels) {
      const b = (byName[kern.name] ??= { count: 0, ms: 0 });
      b.count++;
      b.ms += typeof kern.kernelTimeMs === 'number' ? kern.kernelTimeMs : 0;
    }
    const rows = Object.entries(byName).sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((a, [, v]) => a + v.ms, 0);
    console.log(
      `\nkernels of one update on the backend path (GPU ms from timestamp queries; 0 where the device has none): ${prof.kernels.length} kernels, ${total.toFixed(2)} ms`,
    );
    console.log('| kernel | dispatches | GPU ms |');
    console.log('|---|---:|---:|');
    for (const [name, v] of rows) console.log(`| ${name} | ${v.count} | ${v.ms.toFixed(2)} |`);
    result.kernels = Object.fromEntries(rows);
  }
  for (const l of layers) l.dispose();
  updater.dispose();
}
console.log(JSON.stringify(result));
