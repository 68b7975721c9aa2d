// @ts-check
// The backend report: every backend @lora/tensor can find here, a matmul and a gradient on each,
// checked against a float64 reference, and the backend 'auto' would pick.
import * as tf from '@tensorflow/tfjs-core';
import { Generator, initBackend, listBackends } from '@lora/tensor';

const N = 256;
const SOFTWARE_WEBGPU = {
  webgpu: { dawnOptions: ['backend=opengles'], featureLevel: /** @type {const} */ ('compatibility') },
};

/** @param {Float32Array} a @param {Float32Array} b */
function reference(a, b) {
  const out = new Float64Array(N * N);
  for (let i = 0; i < N; i++)
    for (let k = 0; k < N; k++) {
      const v = a[i * N + k];
      for (let j = 0; j < N; j++) out[i * N + j] += v * b[k * N + j];
    }
  return out;
}

const g = new Generator(0);
const a = g.fillUniform(new Float32Array(N * N), -1, 1);
const b = g.fillUniform(new Float32Array(N * N), -1, 1);
const want = reference(a, b);
const wantScale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** Runs the matmul and a gradient on the active backend; returns timings and errors. */
async function exercise() {
  const x = tf.tensor2d(a, [N, N]);
  const y = tf.tensor2d(b, [N, N]);
  const first = performance.now();
  const warm = tf.matMul(x, y);
  await warm.data();
  warm.dispose();
  const t0 = performance.now();
  const prod = tf.matMul(x, y);
  const got = await prod.data();
  const ms = performance.now() - t0;
  let err = 0;
  for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
  // d/dx sum(x^2 * 3) = 6x, checked exactly on small integers
  const grad = tf.grad((t) => tf.sum(tf.mul(tf.square(t), 3)))(tf.tensor1d([1, -2, 0.5]));
  const gradValues = Array.from(await grad.data());
  const gradOk = gradValues.join(',') === '6,-12,3';
  tf.dispose([x, y, prod, grad]);
  const relErr = err / wantScale;
  return { firstMs: t0 - first, ms, relErr, gradOk, gradValues, ok: gradOk && relErr < 1e-4 };
}

const rows = [];
const available = await listBackends();
for (const row of available) {
  if (!row.available) {
    rows.push({ backend: row.name, adapter: '-', result: `unavailable: ${row.reason}` });
    continue;
  }
  const info = await initBackend(row.name);
  const r = await exercise();
  rows.push({
    backend: row.name,
    ok: r.ok,
    adapter: `${info.adapter}${info.software ? ' [software]' : ''}`,
    result: `${N}² matmul ${r.ms.toFixed(1)} ms (${((2 * N ** 3) / r.ms / 1e6).toFixed(1)} GFLOP/s), rel err ${r.relErr.toExponential(1)}; gradient ${r.gradOk ? 'ok' : `WRONG ${r.gradValues}`}`,
  });
}
// Without a GPU, Dawn can still offer a software adapter through Mesa's OpenGL ES: report it too.
const webgpu = available.find((r) => r.name === 'webgpu');
if (webgpu && !webgpu.available) {
  try {
    const info = await initBackend('webgpu', SOFTWARE_WEBGPU);
    const r = await exercise();
    rows.push({
      backend: 'webgpu',
      ok: r.ok,
      adapter: `${info.adapter} [software, Dawn OpenGL ES]`,
      result: `${N}² matmul ${r.ms.toFixed(1)} ms, rel err ${r.relErr.toExponential(1)}; gradient ${r.gradOk ? 'ok' : 'WRONG'}`,
    });
  } catch (e) {
    rows.push({
      backend: 'webgpu',
      adapter: '-',
      result: `software adapter unavailable too: ${/** @type {Error} */ (e).message.split('. ')[0]}`,
    });
  }
}

console.log('@lora backend report\n');
const w = Math.max(...rows.map((r) => r.adapter.length));
for (const r of rows) console.log(`${r.backend.padEnd(11)} ${r.adapter.padEnd(w)}  ${r.result}`);
const chosen = await initBackend('auto');
console.log(`\ninitBackend('auto') picks: ${chosen.name} (${chosen.adapter})`);
const failed = rows.filter((r) => r.ok === false);
if (failed.length) {
  console.error(`\n${failed.length} backend(s) computed wrong results`);
  process.exit(1);
}
