/**
 * One module of `lora combine --type ties_svd --density 0.5` at 4096², phase by phase, in process CPU
 * time (and wall time): read the two adapters (32 layers × q, v), B·A of each, the TIES trim (magnitude
 * threshold and mask), sign election with the disjoint merge, the truncated SVD, and writing the
 * result. Run after `npm run bench:combine -w @lora/cli` made the adapters (or BENCH_LAYERS=1 for a
 * small pair): `esbuild bench/combine-profile.ts --bundle --platform=node --format=esm
 * --packages=external --outfile=.bench/combine-profile.mjs && node .bench/combine-profile.mjs`.
 * LORA_BACKEND picks the backend (default wasm). PRUNE=tensor times the backend's trim (what webgpu
 * runs) instead of the float32-array one the CPU backends run. COMBINE_DIR: where the adapters a/ and b/
 * are (default packages/cli/.bench/combine-7b). On the GPU machine see bench/combine-gpu-device.sh.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { svdTruncated } from '@lora/linalg';
import { Generator, initBackend, serializeSafetensors } from '@lora/tensor';
import { magnitudePruneTensor } from '../../core/src/combination/magnitude-prune';
import { magnitudePruneArray, mergeArrays } from '../../core/src/combination/merge-arrays';
import { readAdapter } from '../src/shared';

const dir = process.env.COMBINE_DIR ?? join(import.meta.dirname, '..', '.bench', 'combine-7b');
await initBackend((process.env.LORA_BACKEND ?? 'wasm') as 'wasm', {
  // literal, so that a bundle for the GPU machine holds the backend (wasm is found on its own here)
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
const rows: [string, number, number][] = [];
async function phase<T>(name: string, f: () => Promise<T> | T): Promise<T> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const r = await f();
  const c = process.cpuUsage(c0);
  rows.push([name, performance.now() - t0, (c.user + c.system) / 1000]);
  return r;
}

const [a, b] = await phase('read both adapters (64 modules each)', async () => [
  await readAdapter(join(dir, 'a')),
  await readAdapter(join(dir, 'b')),
]);
const key = (f: 'A' | 'B') => `base_model.model.model.layers.0.self_attn.q_proj.lora_${f}.weight`;
const sources = [a, b].map((x) => ({ a: x.tensors[key('A')] as tf.Tensor2D, b: x.tensors[key('B')] as tf.Tensor2D }));
const scaling = 2;
const deltas = await phase('B·A of both (on the backend)', async () => {
  const d = sources.map((s) => tf.tidy(() => tf.mul(tf.matMul(s.b, s.a), scaling)));
  await Promise.all(d.map((t) => t.data()));
  return d;
});
let mismatches = '';
let merged: tf.Tensor2D;
if (process.env.PRUNE === 'tensor') {
  const pruned = await phase('TIES trim, magnitude threshold + mask (backend)', async () => {
    const p = await magnitudePruneTensor(deltas, 0.5);
    await Promise.all(p.map((t) => t.data()));
    return p;
  });
  // the backend's trim against the host's on the same ΔW, entry by entry (not timed)
  let bad = 0;
  for (const [i, t] of deltas.entries()) {
    const want = magnitudePruneArray((await t.data()) as Float32Array, 0.5);
    const got = await (pruned[i] as tf.Tensor).data();
    for (let j = 0; j < want.length; j++) if ((got[j] as number) !== (want[j] as number)) bad++;
  }
  mismatches = `, backend trim against the host's: ${bad} of ${2 * 4096 * 4096} entries differ`;
  merged = await phase('sign election + disjoint merge (backend)', async () => {
    // what mergeTaskTensors does on webgpu after the trim (core's adapter-combination.ts)
    const m = tf.tidy(() => {
      const signs = pruned.map((t) => tf.sign(t));
      const votes = tf.addN(pruned);
      const elected = tf.where(tf.greaterEqual(votes, 0), tf.onesLike(votes), tf.neg(tf.onesLike(votes)));
      const agree = signs.map((x) => tf.relu(tf.mul(x, elected)));
      const weighted = pruned.map((t, i) => tf.mul(tf.mul(t, [0.7, 1.3][i] as number), agree[i] as tf.Tensor));
      return tf.div(tf.addN(weighted), tf.maximum(tf.addN(agree), 1));
    }) as tf.Tensor2D;
    await m.data();
    return m;
  });
  tf.dispose(pruned);
} else {
  const values = await phase('read B·A back to the host', async () => {
    const v: Float32Array[] = [];
    for (const t of deltas) v.push((await t.data()) as Float32Array);
    return v;
  });
  const pruned = await phase('TIES trim, histogram threshold + mask (host)', () =>
    values.map((v) => magnitudePruneArray(v, 0.5)),
  );
  const m = await phase('sign election + disjoint merge (host)', () =>
    mergeArrays(pruned, [0.7, 1.3], 'none', 'total', 0.5, new Generator(0)),
  );
  merged = await phase('merged ΔW to a tensor', () => tf.tensor2d(m, [4096, 4096]));
}
tf.dispose(deltas);
const top = await phase('truncated SVD, rank 16', () => svdTruncated(merged, { rank: 16 }));
const factors = await phase('U, S, Vh to the host; B, A tensors', async () => {
  const u = (await top.U.data()) as Float32Array;
  const s = (await top.S.data()) as Float32Array;
  const v = (await top.Vh.data()) as Float32Array;
  const bb = new Float32Array(4096 * 16);
  for (let i = 0; i < 4096; i++)
    for (let j = 0; j < 16; j++) bb[i * 16 + j] = (u[i * 16 + j] as number) * (s[j] as number);
  return { b: tf.tensor2d(bb, [4096, 16]), a: tf.tensor2d(v, [16, 4096]) };
});
const out: Record<string, tf.Tensor> = {};
for (let i = 0; i < 64; i++) {
  out[`m${i}.lora_A.weight`] = factors.a;
  out[`m${i}.lora_B.weight`] = factors.b;
}
await phase('serialize 64 modules of A, B', () => serializeSafetensors(out, { metadata: { format: 'pt' } }));
tf.dispose([merged, top.U, top.S, top.Vh, factors.a, factors.b]);
tf.dispose([...Object.values(a.tensors), ...Object.values(b.tensors)]);

console.log(`\n${new Date().toISOString()}, backend ${tf.getBackend()}, iterations ${top.iterations}${mismatches}\n`);
console.log('| phase | wall ms | CPU ms |\n| --- | ---: | ---: |');
for (const [n, w, c] of rows) console.log(`| ${n} | ${w.toFixed(0)} | ${c.toFixed(0)} |`);
