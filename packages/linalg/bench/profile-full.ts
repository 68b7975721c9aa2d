/**
 * `node .bench/profile-full.mjs [m] [n] [runs]`: one full float32 SVD (`svd(a, { method: 'backend' })`) on the
 * active backend (LORA_BACKEND, default wasm), its process CPU time split by stage (onProgress), then
 * numpy's float32 gesdd on one thread over the same matrix in the same run (CPU time, `time.process_time`).
 * For a loaded machine: CPU seconds are the figures, wall seconds are printed beside them.
 * PEER=0 skips numpy; PYTHON names the interpreter; LORA_WASM_DIR: where the .wasm binaries are (bundled runs).
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import { svd } from '../src/index';
import { blasEnv } from './cases';
import { heapGemv } from '../src/wasm-gemv';

const m = Number(process.argv[2] ?? 1024);
const n = Number(process.argv[3] ?? m);
const runs = Number(process.argv[4] ?? 3);
// bundled for the GPU machine (no node_modules there): the backend is bundled in, and LORA_WASM_DIR
// names the directory that holds tfjs-backend-wasm's .wasm binaries
const wasmDir = process.env.LORA_WASM_DIR;
// tfjs-backend-wasm's Node loader reads __dirname, which an ES module bundle does not define
const g = globalThis as { __dirname?: string };
g.__dirname ??= wasmDir ?? dirname(fileURLToPath(import.meta.url));
const info = await initBackend((process.env.LORA_BACKEND ?? 'wasm') as 'wasm', {
  importers: { '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm') },
  ...(wasmDir ? { wasm: { wasmPaths: `${wasmDir.replace(/\/$/, '')}/` } } : {}),
});
tf.env().set('PROD', true);
console.log(
  `${info.name} (${info.adapter}); heap matrix–vector kernels: ${heapGemv() ? 'yes' : 'no'}; Node ${process.version}`,
);
// the same Gaussian matrix on both sides (a fixed LCG + Box–Muller), written for the peer
const data = new Float32Array(m * n);
let s = 12345;
const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) + 0.5) / 4294967296;
for (let i = 0; i < data.length; i += 2) {
  const r = Math.sqrt(-2 * Math.log(rnd()));
  const t = 2 * Math.PI * rnd();
  data[i] = r * Math.cos(t);
  if (i + 1 < data.length) data[i + 1] = r * Math.sin(t);
}
const a = tf.tensor2d(data, [m, n]);
const cpuMs = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
};
let sigma: Float32Array | null = null;
for (let run = 0; run <= runs; run++) {
  const stages = new Map<string, [number, number]>();
  let stage = '';
  let c0 = cpuMs();
  let w0 = performance.now();
  const start = [c0, w0];
  const r = await svd(a, {
    method: 'backend',
    onProgress: (p) => {
      if (p.stage === stage) return;
      const c = cpuMs();
      const w = performance.now();
      if (stage) {
        const [pc, pw] = stages.get(stage) ?? [0, 0];
        stages.set(stage, [pc + c - c0, pw + w - w0]);
      }
      stage = p.stage;
      c0 = c;
      w0 = w;
    },
  });
  const c = cpuMs();
  const w = performance.now();
  stages.set(stage, [c - c0, w - w0]);
  sigma = (await r.S.data()) as Float32Array;
  tf.dispose([r.U, r.S, r.Vh]);
  const parts = [...stages].map(([k, [cc, ww]]) => `${k} ${(cc / 1000).toFixed(2)} (${(ww / 1000).toFixed(2)})`);
  console.log(
    `${run === 0 ? 'warm-up' : `run ${run}`}: ${m}×${n} ${info.name} CPU ${((c - (start[0] as number)) / 1000).toFixed(2)} s (wall ${((w - (start[1] as number)) / 1000).toFixed(2)} s, load ${loadavg()[0]?.toFixed(1)}): ${parts.join(', ')}`,
  );
}
if (process.env.PEER !== '0') {
  const py = `
import sys, time, numpy as np
m, n = ${m}, ${n}
a = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32).reshape(m, n).copy()
s64 = np.linalg.svd(a.astype(np.float64), compute_uv=False)
best = []
for _ in range(${Math.max(1, runs)}):
    c = time.process_time(); w = time.perf_counter()
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    best.append((time.process_time() - c, time.perf_counter() - w))
print(" ".join(f"{c:.3f}({w:.3f})" for c, w in best))
print(repr(list(s64[:]))[:0] + ",".join(repr(float(x)) for x in s64))
`;
  const env = blasEnv(1);
  const res = spawnSync(process.env.PYTHON ?? 'python3', ['-c', py], {
    input: Buffer.from(data.buffer),
    env,
    encoding: 'utf8',
    maxBuffer: 1 << 28,
  });
  if (res.status !== 0) console.log(`peer failed: ${res.stderr}`);
  else {
    const [times, s64] = res.stdout.trim().split('\n');
    const want = (s64 as string).split(',').map(Number);
    let err = 0;
    for (let i = 0; i < want.length; i++)
      err = Math.max(err, Math.abs((sigma?.[i] ?? Number.NaN) - (want[i] as number)));
    console.log(
      `numpy f32 gesdd, 1 thread, CPU (wall) s: ${times}; ours max Δσ/σ₁ ${(err / (want[0] as number)).toExponential(1)}`,
    );
  }
}
a.dispose();
