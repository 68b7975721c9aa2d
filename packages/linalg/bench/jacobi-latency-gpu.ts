/**
 * Where the Jacobi SVD's time goes at 1024² on webgpu (issue 13: 4.7–6.1× torch CUDA there in
 * `large-gpu.ts` runs on 2026-12-04, 1.9–2.5× in one call on 2026-12-03, with the same programs):
 * the cost of one read-back (a sum of 4096 floats on the GPU, then `data()`), of a chain of small dependent dispatches
 * read once, and of `svdJacobi` itself sweep by sweep (the time between its progress reports), with
 * the defaults and with `innerSweeps: 1` and `block: 32`. No peer: `large-gpu.ts` times torch. Bundle
 * with `../shared/device/pack packages/linalg/bench/jacobi-latency-gpu.ts`; on the GPU machine:
 * `source .device/setup.sh && $NODE .device/bundle/jacobi-latency-gpu.mjs [n]`. JSON lines.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import { type JacobiSvdOptions, jacobiStats, svdJacobi } from '../src/svd-jacobi';

const n = Number(process.argv[2] ?? 1024);
await initBackend('webgpu', {
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
tf.env().set('PROD', true);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const log = (o: object) => console.log(JSON.stringify(o));

// one read-back of a small reduction on the GPU (4096 floats: above tfjs's CPU hand-off), 60 times (the first 10 not kept)
const one = tf.randomNormal([4096], 0, 1, 'float32', 1);
const reads: number[] = [];
for (let i = 0; i < 60; i++) {
  const t0 = performance.now();
  const t = tf.tidy(() => tf.sum(tf.add(one, i)));
  await t.data();
  t.dispose();
  if (i >= 10) reads.push(performance.now() - t0);
}
log({
  probe: 'read-back of a sum of 4096 (2 dispatches)',
  medianMs: +median(reads).toFixed(3),
  minMs: +Math.min(...reads).toFixed(3),
});

// chains of k dependent elementwise dispatches on 1024² floats, one read at the end
const big = tf.randomNormal([n, n], 0, 1, 'float32', 3);
for (const k of [1, 50, 200, 800]) {
  const times: number[] = [];
  for (let rep = 0; rep < 4; rep++) {
    const t0 = performance.now();
    let y = tf.clone(big);
    for (let i = 0; i < k; i++) {
      const z = tf.mul(y, 1.0001);
      y.dispose();
      y = z;
    }
    const s = tf.slice(tf.reshape(y, [-1]), 0, 1);
    await s.data();
    tf.dispose([s, y]);
    if (rep > 0) times.push(performance.now() - t0);
  }
  log({ probe: `chain of ${k} dispatches on ${n}², one read`, medianMs: +median(times).toFixed(2) });
}

// svdJacobi: total and the time of each sweep (between its progress reports)
const a = tf.randomNormal([n, n], 0, 1, 'float32', 7) as tf.Tensor2D;
const variants: [string, JacobiSvdOptions][] = [
  ['defaults', {}],
  ['innerSweeps 1', { innerSweeps: 1 }],
  ['block 32', { block: 32 }],
  ['defaults again', {}],
];
for (const [label, options] of variants) {
  for (let rep = 0; rep < 4; rep++) {
    const marks: number[] = [];
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const r = await svdJacobi(a, { ...options, onProgress: () => marks.push(performance.now() - t0) });
    await r.S.data();
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    tf.dispose([r.U, r.S, r.Vh]);
    if (rep === 0) continue; // compiles
    const sweeps = marks.map((m, i) => +(m - (i ? (marks[i - 1] as number) : 0)).toFixed(1));
    log({
      svd: label,
      rep,
      ms: +ms.toFixed(1),
      cpuMs: Math.round((c.user + c.system) / 1000),
      sweeps: jacobiStats.sweeps,
      dispatches: jacobiStats.dispatches,
      reportsMs: sweeps,
    });
  }
}
tf.dispose([one, big, a]);
