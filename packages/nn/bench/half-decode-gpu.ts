/**
 * Issue 12's GPU check of 16-bit weight storage on webgpu (Dawn, Node), where decoding takes the ops
 * path with the 'bytes' packing (three bytes a word: webgpu's int32 arithmetic is float32): every bf16
 * and f16 code decoded bit for bit against the host table, HalfLinear's forward against a float32
 * matmul with the decoded weight, and the time of a decode against the matmul it feeds. Prints one JSON
 * object. Bundle with ../shared/device/pack; run `node half-decode-gpu.mjs > $OUT/half-decode-gpu.json`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import { HalfLinear, Linear, decodeHalfWords, halfRowWords, halfTable, packHalfCodes } from '../src/index';

const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};
const info = await initBackend((process.env.LORA_BENCH_BACKEND ?? 'webgpu') as 'webgpu', { importers });
const out: Record<string, unknown> = { backend: tf.getBackend(), info };
const every = Uint16Array.from({ length: 65536 }, (_, i) => i);
for (const format of ['bf16', 'f16'] as const) {
  const want = new Uint32Array(halfTable(format).buffer);
  const words = tf.tensor2d(packHalfCodes(every, 256, 256, 'bytes'), [256, halfRowWords(256, 'bytes')], 'int32');
  const got = decodeHalfWords(words, 256, format, 'bytes');
  const bits = new Uint32Array(((await got.data()) as Float32Array).buffer.slice(0));
  let bad = 0;
  const f = new Float32Array(bits.buffer);
  for (let i = 0; i < 65536; i++)
    if (bits[i] !== want[i] && !(Number.isNaN(f[i]) && Number.isNaN(halfTable(format)[i]))) bad++;
  out[`${format}.codesWrong`] = bad;
  tf.dispose([words, got]);
}
const lin = new Linear(576, 1536);
const half = HalfLinear.fromLinear(lin, { format: 'bf16' });
const x = tf.randomNormal([32, 576]);
const w = half.decodeWeight();
const y = half.call(x) as tf.Tensor;
const ref = tf.matMul(x, w, false, true);
const [yd, rd] = [await y.data(), await ref.data()];
let maxErr = 0;
let maxRef = 0;
const bias = (await lin.bias?.data()) ?? new Float32Array(1536);
for (let i = 0; i < yd.length; i++) {
  maxErr = Math.max(maxErr, Math.abs((yd[i] as number) - ((rd[i] as number) + (bias[i % 1536] as number))));
  maxRef = Math.max(maxRef, Math.abs(rd[i] as number));
}
out.forwardRelErr = maxErr / maxRef;
const time = async (f: () => tf.Tensor, reps = 10) => {
  const warm = f();
  await warm.data();
  warm.dispose();
  const t0 = performance.now();
  const ts: tf.Tensor[] = [];
  for (let i = 0; i < reps; i++) ts.push(f());
  await (ts.at(-1) as tf.Tensor).data();
  tf.dispose(ts);
  return (performance.now() - t0) / reps;
};
out.decode1536x576Ms = await time(() => half.decodeWeight());
out.matmul32x576x1536Ms = await time(() => tf.matMul(x, w, false, true));
out.halfForward32Ms = await time(() => half.call(x) as tf.Tensor);
const emb = tf.tensor2d(
  packHalfCodes(
    Uint16Array.from({ length: 49152 * 576 }, (_, i) => (i * 40503) & 0xffff),
    49152,
    576,
    'bytes',
  ),
  [49152, halfRowWords(576, 'bytes')],
  'int32',
);
out.decode49152x576Ms = await time(() => decodeHalfWords(emb, 576, 'bf16', 'bytes'), 3);
tf.dispose([x, w, y, ref, emb]);
console.log(JSON.stringify(out, null, 2));
