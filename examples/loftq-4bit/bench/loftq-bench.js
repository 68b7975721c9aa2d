// @ts-check
// The LoftQ benchmark of issue 14: quantize and LoftQ-initialise one 4096 × 4096 weight on wasm and
// webgpu, with PyTorch doing the same work in the same run (bench/loftq_peer.py, spawned here), one
// table at the end. Cases, each the median of 3 timed runs after a warm-up, with the relative error
// ||W - Q - B·A|| / ||W|| each reached:
//   nf4                    bitsandbytes' NF4 quantize + dequantize (ours: on the host, exact; also on the backend)
//   loftq T=1 / T=5        loftqInit 4 bits, r 16, with the randomized SVD (q 32, 4 power iterations): the
//                          peer runs torch.svd_lowrank with the same q and niter, and PEFT's full SVD beside
// Environment: LORA_BENCH_BACKENDS (default wasm,webgpu: those that start), LORA_BENCH_N (4096),
// PYTHON (default python3), LORA_BENCH_PEER=0 (no peer), LORA_BENCH_PEER_FILE (the peer's output, run
// before: python3 loftq_peer.py N > file), LORA_BENCH_RUNS (3).
// Here:  npm run bench -w @lora-examples/loftq-4bit     (after a build)
// On the GPU machine, bundled by ../shared/device/pack examples/loftq-4bit/bench/loftq-bench.js:
//   source .device/setup.sh && $NODE .device/bundle/loftq-bench.mjs
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { QuantizedLinear, loftqInit, nf4Dequantize, nf4Quantize, quantizeModel } from '@lora/loftq';
import { AdamW, Linear, Module, train, withoutInit } from '@lora/nn';
import { Generator, initBackend, maxRelativeError } from '@lora/tensor';

const env = process.env;
const N = Number(env.LORA_BENCH_N ?? 4096);
const RUNS = Number(env.LORA_BENCH_RUNS ?? 3);
const backends = (env.LORA_BENCH_BACKENDS ?? 'wasm,webgpu').split(',');

/** The process CPU time of the last {@link timed} call's median run, ms (the figure on a loaded machine). */
let lastCpuMs = Number.NaN;

/** The median wall time of RUNS runs after a warm-up; the same run's process CPU time in `lastCpuMs`. @param {() => Promise<unknown>} fn */
async function timed(fn) {
  await fn();
  /** @type {{ wall: number, cpu: number }[]} */
  const runs = [];
  for (let i = 0; i < RUNS; i++) {
    const c = process.cpuUsage();
    const t = performance.now();
    await fn();
    const wall = performance.now() - t;
    const d = process.cpuUsage(c);
    runs.push({ wall, cpu: (d.user + d.system) / 1000 });
  }
  runs.sort((a, b) => a.wall - b.wall);
  const mid = runs[Math.floor(runs.length / 2)];
  lastCpuMs = mid?.cpu ?? Number.NaN;
  return mid?.wall ?? Number.NaN;
}

/**
 * ||W − Q − B·A|| / ||W||, summed in float64 on the host: a float32 sum over 16.7M squares (tf.norm on wasm)
 * drifts in the third digit, which would hide the differences this table is about.
 * @param {Float32Array} w @param {tf.Tensor} q @param {tf.Tensor} [ba]
 */
async function relativeError(w, q, ba) {
  const qv = await q.data();
  const bav = ba ? await ba.data() : null;
  let num = 0;
  let den = 0;
  for (let i = 0; i < w.length; i++) {
    const wi = /** @type {number} */ (w[i]);
    const e = wi - /** @type {number} */ (qv[i]) - (bav ? /** @type {number} */ (bav[i]) : 0);
    num += e * e;
    den += wi * wi;
  }
  return Math.sqrt(num / den);
}

// Bundled into one ES module, tfjs-backend-wasm's Emscripten loader reads the free variable __dirname
// for the folder of its .wasm files: the bundle's own folder (copy the three .wasm files next to it)
// or LORA_WASM_DIR. Unbundled, the loader's CommonJS __dirname shadows this.
/** @type {{ __dirname?: string }} */ (globalThis).__dirname ??= env.LORA_WASM_DIR ?? import.meta.dirname;
// the importers let a bundled copy (../shared/device/pack) reach the backends it carries
const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};
await initBackend('cpu', { importers }); // the weight is drawn once, on the host backend, then read by every case
const w = (() => {
  const g = new Generator(0);
  const t = g.randn([N, N]);
  const v = t.dataSync();
  t.dispose();
  return Float32Array.from(v, (x) => x * 0.02);
})();

/** @type {Record<string, Record<string, { ms: number, cpuMs?: number, error: number }>>} */
const ours = {};
/** @type {Record<string, number>} values whose backend-packed NF4 code differs from the host quantizer's */
const mismatches = {};
/** @type {Record<string, Awaited<ReturnType<typeof loraOverNf4>>>} */
const training = {};

/**
 * LoRA over an NF4 base on the active backend: a 512 × 512 Linear quantized by quantizeModel, LoRA r 8
 * on it, 20 AdamW steps towards a fixed target. The forward before training against a float32 Linear
 * holding the dequantized weight (on the same backend), and the loss before and after.
 */
async function loraOverNf4() {
  class Net extends Module {
    proj = this.registerModule(
      'proj',
      withoutInit(() => new Linear(512, 512, { bias: false })),
    );
    /** @param {tf.Tensor} x */
    forward(x) {
      return this.proj.call(x);
    }
  }
  const g = new Generator(1);
  const net = new Net();
  net.proj.weight.assign(tf.tidy(() => tf.mul(g.randn([512, 512]), 0.05)));
  quantizeModel(net, { bits: 4 });
  const x = g.randn([32, 512]);
  const target = g.randn([32, 512]);
  const float = withoutInit(() => new Linear(512, 512, { bias: false }));
  const dq = /** @type {QuantizedLinear} */ (/** @type {unknown} */ (net.proj)).dequantize();
  float.weight.assign(dq);
  const peft = getPeftModel(net, { r: 8, loraAlpha: 8, targetModules: ['proj'] });
  const [got, want] = [/** @type {tf.Tensor} */ (peft.call(x)), float.call(x)];
  const forwardError = maxRelativeError(await got.data(), await want.data());
  tf.dispose([got, want, dq]);
  float.dispose();
  const optimizer = new AdamW(peft.trainableParameters(), { lr: 1e-2 });
  const t = performance.now();
  const result = await train(peft, [{ x, target }], {
    optimizer,
    epochs: 20,
    progressBar: false,
    loss: (b) =>
      /** @type {tf.Scalar} */ (tf.losses.meanSquaredError(b.target, /** @type {tf.Tensor} */ (peft.call(b.x)))),
  });
  const stepMs = (performance.now() - t) / 20;
  optimizer.dispose();
  peft.dispose();
  tf.dispose([x, target]);
  return {
    forwardError,
    lossFirst: result.losses[0] ?? Number.NaN,
    lossLast: result.losses.at(-1) ?? Number.NaN,
    stepMs,
  };
}
for (const name of backends) {
  try {
    await initBackend(/** @type {'wasm'} */ (name), { importers });
  } catch (e) {
    console.error(`${name}: not available (${/** @type {Error} */ (e).message.split('\n')[0]})`);
    continue;
  }
  /** @type {Record<string, { ms: number, cpuMs?: number, error: number }>} */
  const rows = {};
  const label = `${name}`;
  // host NF4 (the exact quantizer; reads the weight from the host)
  let q = /** @type {tf.Tensor | null} */ (null);
  const hostMs = await timed(async () => {
    q?.dispose();
    q = nf4Dequantize(nf4Quantize({ data: w, shape: [N, N] }));
    await q.data();
  });
  rows.nf4 = { ms: hostMs, cpuMs: lastCpuMs, error: await relativeError(w, /** @type {tf.Tensor} */ (q)) };
  const hostValues = /** @type {Float32Array} */ (await /** @type {tf.Tensor} */ (q).data());
  /** @type {tf.Tensor} */ (q).dispose();
  // NF4 on the backend: pack (quantizeModel's path) and decode (what every forward does)
  const lin = withoutInit(() => new Linear(N, N, { bias: false }));
  lin.weight.assign(tf.tensor2d(w, [N, N]));
  let layer = /** @type {QuantizedLinear | null} */ (null);
  const packMs = await timed(async () => {
    layer?.dispose();
    layer = QuantizedLinear.fromLinear(lin, { bits: 4 });
    await layer.weight.data();
  });
  const packCpuMs = lastCpuMs;
  const ql = /** @type {QuantizedLinear} */ (/** @type {unknown} */ (layer));
  let decoded = /** @type {tf.Tensor | null} */ (null);
  const decodeMs = await timed(async () => {
    decoded?.dispose();
    decoded = ql.dequantize();
    await decoded.data();
  });
  rows['nf4 pack (backend)'] = {
    ms: packMs,
    cpuMs: packCpuMs,
    error: await relativeError(w, /** @type {tf.Tensor} */ (decoded)),
  };
  rows['nf4 decode (backend)'] = { ms: decodeMs, cpuMs: lastCpuMs, error: Number.NaN };
  // the backend's codes against the exact host quantizer's: how many values decode differently
  const got = await /** @type {tf.Tensor} */ (decoded).data();
  let differ = 0;
  for (let i = 0; i < got.length; i++) if (got[i] !== hostValues[i]) differ++;
  mismatches[label] = differ;
  /** @type {tf.Tensor} */ (decoded).dispose();
  ql.dispose();
  lin.dispose();
  training[label] = await loraOverNf4();
  for (const steps of [1, 5]) {
    /** @type {Awaited<ReturnType<typeof loftqInit>> | null} */
    let r = null;
    const ms = await timed(async () => {
      if (r) tf.dispose([r.dequantized, r.loraA, r.loraB]);
      r = await loftqInit(
        { data: w, shape: [N, N] },
        { numBits: 4, reducedRank: 16, numIter: steps, svd: 'randomized', svdOversample: 16 },
      );
    });
    const cpuMs = lastCpuMs;
    const res = /** @type {Awaited<ReturnType<typeof loftqInit>>} */ (/** @type {unknown} */ (r));
    const ba = tf.matMul(res.loraB, res.loraA);
    rows[`loftq-t${steps}-lowrank`] = { ms, cpuMs, error: await relativeError(w, res.dequantized, ba) };
    tf.dispose([ba, res.dequantized, res.loraA, res.loraB]);
  }
  ours[label] = rows;
  console.error(`${label}: ${JSON.stringify(rows)}`);
}

/** @type {{ peer: string, device: string, rows: Record<string, { ms: number, cpuMs?: number, error: number }> } | null} */
let peer = null;
if (env.LORA_BENCH_PEER_FILE) {
  // the peer's JSON line, from a run of loftq_peer.py made before this one (same machine, same call)
  try {
    peer = JSON.parse(readFileSync(env.LORA_BENCH_PEER_FILE, 'utf8').trim().split('\n').at(-1) ?? 'null');
  } catch (e) {
    console.error(`peer: no result in ${env.LORA_BENCH_PEER_FILE} (${/** @type {Error} */ (e).message})`);
  }
} else if (env.LORA_BENCH_PEER !== '0') {
  const script = join(import.meta.dirname ?? '.', 'loftq_peer.py');
  const here = spawnSync('test', ['-f', script]).status === 0 ? script : 'examples/loftq-4bit/bench/loftq_peer.py';
  const p = spawnSync(env.PYTHON ?? 'python3', [here, String(N)], { encoding: 'utf8', timeout: 300_000 });
  if (p.status === 0) peer = JSON.parse(p.stdout.trim().split('\n').at(-1) ?? 'null');
  else console.error(`peer failed (${p.status}): ${p.stderr?.slice(-500)}`);
}

const cases = [
  ['nf4', 'NF4 quantize + dequantize (ours: host, exact)'],
  ['nf4 pack (backend)', 'NF4 quantize + pack on the backend (quantizeModel)'],
  ['nf4 decode (backend)', 'NF4 decode on the backend (each forward)'],
  ['loftq-t1-lowrank', 'loftqInit T=1, randomized SVD q 32 niter 4'],
  ['loftq-t5-lowrank', 'loftqInit T=5, randomized SVD q 32 niter 4'],
  ['loftq-t1-full', "PEFT's loftq_init T=1 (full SVD)"],
  ['loftq-t5-full', "PEFT's loftq_init T=5 (full SVD)"],
];
const cols = Object.keys(ours);
const fmt = (/** @type {{ ms: number, cpuMs?: number, error: number } | undefined} */ c) =>
  c
    ? `${c.ms.toFixed(0)} ms${c.cpuMs === undefined || Number.isNaN(c.cpuMs) ? '' : `, CPU ${c.cpuMs.toFixed(0)} ms`}${Number.isNaN(c.error) ? '' : ` (err ${c.error.toFixed(4)})`}`
    : '–';
console.log(
  `\nLoftQ on one ${N} × ${N} weight (4 bits, r 16), median of ${RUNS}${peer ? `; peer: ${peer.peer} on ${peer.device}` : ''}`,
);
console.log(`| case | ${cols.map((c) => `ours, ${c}`).join(' | ')} | ${peer ? peer.peer : 'peer'} |`);
console.log(`| --- | ${cols.map(() => '---').join(' | ')} | --- |`);
for (const [key = '', title] of cases) {
  const peerKey = key === 'nf4 pack (backend)' || key === 'nf4 decode (backend)' ? null : key;
  console.log(
    `| ${title} | ${cols.map((c) => fmt(ours[c]?.[key])).join(' | ')} | ${fmt(peerKey ? peer?.rows[peerKey] : undefined)} |`,
  );
}
console.log(
  `\nNF4 packed on the backend, values decoding differently from the exact host quantizer: ${cols.map((c) => `${c} ${mismatches[c]} of ${N * N}`).join(', ')}`,
);
for (const c of cols) {
  const r = training[c];
  if (r)
    console.log(
      `LoRA over an NF4 base on ${c} (512 × 512, r 8, 20 AdamW steps): forward vs float32 Linear of the dequantized weight ${r.forwardError.toExponential(1)} (relative), loss ${r.lossFirst.toFixed(4)} → ${r.lossLast.toFixed(4)}, ${r.stepMs.toFixed(1)} ms a step`,
    );
}
console.log(JSON.stringify({ n: N, ours, mismatches, training, peer }));
