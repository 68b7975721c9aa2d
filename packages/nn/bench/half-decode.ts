/**
 * Process CPU time of decoding a 16-bit weight (`decodeHalfWords`, 'pairs') on the active backend,
 * op by op, against a float32 matmul of the same weight: where HalfLinear's forward time goes.
 * `node half-decode.mjs [backend] [rows] [cols]`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type BackendName, initBackend } from '@lora/tensor';
import { decodeHalfWords, halfRowWords, halfTable, packHalfCodes } from '../src/index';

const backend = (process.argv[2] ?? 'wasm') as BackendName;
const rows = Number(process.argv[3] ?? 1536);
const cols = Number(process.argv[4] ?? 576);
await initBackend(backend);
const codes = Uint16Array.from({ length: rows * cols }, (_, i) => (i * 40503) & 0xffff);
const words = tf.tensor2d(packHalfCodes(codes, rows, cols, 'pairs'), [rows, halfRowWords(cols, 'pairs')], 'int32');
const cpu = async (label: string, f: () => tf.Tensor) => {
  const warm = f();
  await warm.data();
  warm.dispose();
  const c0 = process.cpuUsage();
  const reps = 5;
  for (let i = 0; i < reps; i++) {
    const t = f();
    await t.data();
    t.dispose();
  }
  const c = process.cpuUsage(c0);
  console.log(`| ${label} | ${((c.user + c.system) / 1000 / reps).toFixed(1)} |`);
};
const radix = tf.scalar(65536, 'int32');
const x = tf.randomNormal([32, cols]);
const w = decodeHalfWords(words, cols, 'bf16', 'pairs');
console.log(`${backend}, [${rows}, ${cols}] weight (${rows * cols} values); CPU ms per call, mean of 5`);
console.log('| step | CPU ms |\n| --- | --- |');
await cpu('decodeHalfWords, ops path (all of it)', () => decodeHalfWords(words, cols, 'bf16', 'pairs', { via: 'ops' }));
await cpu('decodeHalfWords, host path (cpu, wasm default), bf16', () =>
  decodeHalfWords(words, cols, 'bf16', 'pairs', { via: 'host' }),
);
await cpu('decodeHalfWords, host path, f16', () => decodeHalfWords(words, cols, 'f16', 'pairs', { via: 'host' }));
await cpu('floorDiv by 2^16 (int32)', () => tf.floorDiv(words, radix));
await cpu('mul + sub (int32)', () => tf.tidy(() => tf.sub(words, tf.mul(words, radix))));
await cpu('concat two [rows, W] int32', () => tf.concat([words, words], 1));
await cpu('upload the 65 536-entry table', () => tf.tensor1d(halfTable('bf16')));
const table = tf.tensor1d(halfTable('bf16'));
const idx = tf.tensor1d(Int32Array.from(codes), 'int32');
await cpu('gather rows·cols codes from the table', () => tf.gather(table, idx));
await cpu('matMul [32, in] × decoded weightᵀ (float32)', () => tf.matMul(x, w, false, true));
