/**
 * Where the time of a tall full SVD on webgpu goes (issue 13: 4096×11008 against torch CUDA): the
 * Gram product XᵀX, CholeskyQR2 as a whole (its default block, then blocks of 64, 96, 192 and 256), the Jacobi SVD of the n×n R it leaves, the product Q·U_R,
 * and the whole `svdJacobi` of X, each timed several times in one process (the first call of each
 * compiles its pipelines; later calls show the warm cost). Each timing ends with a read-back of a
 * scalar that depends on the result, so that the GPU's work is inside it. No peer: `large-gpu.ts`
 * times torch in the same call. Bundle with `../shared/device/pack packages/linalg/bench/qr-first-gpu.ts`;
 * on the GPU machine: `source .device/setup.sh && $NODE .device/bundle/qr-first-gpu.mjs [m n runs]`.
 * Prints one JSON object a line.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import { choleskyQr2Blocked } from '../src/cholesky-qr-blocked';
import { jacobiStats, svdJacobi } from '../src/svd-jacobi';

const [m, n, runs] = [Number(process.argv[2] ?? 11008), Number(process.argv[3] ?? 4096), Number(process.argv[4] ?? 3)];
await initBackend('webgpu', {
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
tf.env().set('PROD', true);

/** Waits for t's work: reads one entry back. */
async function settle(t: tf.Tensor): Promise<void> {
  const one = tf.tidy(() => tf.slice(tf.reshape(t, [-1]), 0, 1));
  await one.data();
  one.dispose();
}

async function time(label: string, fn: () => Promise<tf.Tensor[]>): Promise<void> {
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const out = await fn();
    for (const t of out) await settle(t);
    const ms = performance.now() - t0;
    tf.dispose(out);
    console.log(JSON.stringify({ label, run: i, ms: Math.round(ms), tensors: tf.memory().numTensors }));
  }
}

const x = tf.randomNormal([m, n], 0, 1, 'float32', 7) as tf.Tensor2D;
await settle(x);
await time('gram XᵀX', async () => [tf.matMul(x, x, true, false)]);
await time('choleskyQr2Blocked', async () => {
  const r = await choleskyQr2Blocked(x);
  if (!r) throw new Error('CholeskyQR2 refused a Gaussian matrix');
  return [r.q, r.r];
});
const qr = await choleskyQr2Blocked(x);
if (!qr) throw new Error('CholeskyQR2 refused a Gaussian matrix');
for (const block of [64, 96, 192, 256]) {
  await time(`choleskyQr2Blocked block ${block}`, async () => {
    const r = await choleskyQr2Blocked(x, { block });
    if (!r) throw new Error('CholeskyQR2 refused a Gaussian matrix');
    return [r.q, r.r];
  });
}
await time('svdJacobi(R), n×n', async () => {
  const s = await svdJacobi(qr.r, { qrFirstRatio: Number.POSITIVE_INFINITY });
  console.log(JSON.stringify({ sweeps: jacobiStats.sweeps, dispatches: jacobiStats.dispatches }));
  return [s.U, s.S, s.Vh];
});
// the product U = Q·U_R takes, with R standing in for U_R (the same shapes)
await time('Q·U (m×n by n×n)', async () => [tf.matMul(qr.q, qr.r)]);
await time('svdJacobi(X), default (QR first)', async () => {
  const stages = new Map<string, number>();
  let stage = '';
  let at = performance.now();
  const s = await svdJacobi(x, {
    onProgress: (p) => {
      const now = performance.now();
      if (stage) stages.set(stage, (stages.get(stage) ?? 0) + now - at);
      stage = p.stage;
      at = now;
    },
  });
  stages.set(`${stage} (to the end)`, performance.now() - at);
  console.log(JSON.stringify({ stages: Object.fromEntries([...stages].map(([k, v]) => [k, Math.round(v)])) }));
  return [s.U, s.S, s.Vh];
});
tf.dispose([x, qr.q, qr.r]);
