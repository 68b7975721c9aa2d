/**
 * The GPU-machine part of the bench: svdLowRank rank 16 of 4096² on webgpu (the H200 through Dawn),
 * with what bounds it: one 4096²×16 product read back, and a bare 1-element read-back.
 * Bundle with ../shared/device/pack packages/linalg/bench/linalg-gpu.ts and run `$NODE .device/bundle/linalg-gpu.mjs`
 * next to `python3 packages/linalg/bench/peers.py gpu` (the torch CUDA peer).
 */
import * as tf from '@tensorflow/tfjs-core';
import { Generator, initBackend } from '@lora/tensor';
import { cpuRows, lowRankRow, time } from './cases';

const info = await initBackend('webgpu', {
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
console.log(`backend ${info.name} on ${info.adapter}`);
const rows = [await lowRankRow()];
const g = new Generator(1);
const a = g.randn([4096, 4096]);
const x = g.randn([4096, 16]);
const one = tf.scalar(1);
const product = await time(async () => {
  const y = tf.matMul(a, x);
  await y.data();
  y.dispose();
});
const readback = await time(async () => {
  const y = tf.add(one, 1);
  await y.data();
  y.dispose();
});
tf.dispose([a, x, one]);
console.log(JSON.stringify({ rows, matmul4096x16WithReadbackMs: product, tinyReadbackMs: readback }));
if (process.argv[2] !== 'gpu-only') console.log(JSON.stringify(await cpuRows(null)));
