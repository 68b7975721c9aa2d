// @ts-check
// Where one EVA batch goes (issue 15): the first STEPS batches of the benchmark's data pass on one
// backend, with the backend's read-backs and kernel dispatches counted and the host CPU time of the
// forward passes (hooks and input gathering included) and of the rest (the incremental-PCA updates,
// the convergence test) apart. Process CPU seconds, not wall time (this machine is shared).
//
//   node eva-profile.js DIR [--backend wasm|cpu|webgpu] [--steps N] [--rows R] [--factor auto|backend|host]
//   (--rows: keep the first R sequences of each batch, to keep a run short)
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { forwardFnDefault, initializeLoraEvaWeights } from '@lora/eva';
import { LlamaForCausalLM } from '@lora/models';
import { parseSafetensors } from '@lora/tensor';
import { startBackend } from '../src/backend.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    backend: { type: 'string', default: 'wasm' },
    steps: { type: 'string', default: '3' },
    rows: { type: 'string', default: '0' },
    factor: { type: 'string', default: 'auto' },
  },
});
const dir = positionals[0];
if (!dir) throw new Error('usage: eva-profile.js DIR [--backend wasm] [--steps N] [--rows R]');
const backend = /** @type {'webgpu' | 'wasm' | 'cpu'} */ (values.backend);
await startBackend(backend, dirname(new URL(import.meta.url).pathname));
const settings = JSON.parse(readFileSync(join(dir, 'settings.json'), 'utf8'));
const t = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'batches.safetensors')))).tensors;
const rows = Number(values.rows);
const cut = (/** @type {tf.Tensor} */ x) => (rows ? tf.slice(x, [0, 0], [rows, -1]) : x);
const batches = Array.from({ length: settings.batches }, (_, i) => ({
  inputIds: /** @type {tf.Tensor2D} */ (cut(/** @type {tf.Tensor} */ (t[`input_ids.${i}`]))),
  attentionMask: /** @type {tf.Tensor2D} */ (cut(/** @type {tf.Tensor} */ (t[`attention_mask.${i}`]))),
}));
const model = await LlamaForCausalLM.fromPretrained(join(dir, 'model'));
const warm = tf.tidy(() => model.forward(/** @type {tf.Tensor2D} */ (batches[0]?.inputIds)).logits);
await warm.data();
warm.dispose();
const peft = getPeftModel(model, {
  r: settings.r,
  loraAlpha: settings.lora_alpha,
  targetModules: settings.target_modules,
  initLoraWeights: 'eva',
  evaConfig: settings.eva_config,
});

// counters: read-backs (backend read / readSync) and kernels run, split by phase
const phase = { name: 'other' };
/** @type {Record<string, { reads: number, kernels: number, cpu: number, wall: number }>} */
const totals = {};
const bucket = (/** @type {string} */ n) => (totals[n] ??= { reads: 0, kernels: 0, cpu: 0, wall: 0 });
const be = /** @type {any} */ (tf.backend());
for (const m of ['read', 'readSync']) {
  const orig = be[m].bind(be);
  be[m] = (/** @type {unknown[]} */ ...a) => {
    bucket(phase.name).reads++;
    return orig(...a);
  };
}
const engine = /** @type {any} */ (tf.engine());
const runKernel = engine.runKernel.bind(engine);
engine.runKernel = (/** @type {unknown[]} */ ...a) => {
  bucket(phase.name).kernels++;
  return runKernel(...a);
};
const cpuNow = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e6;
};
/** @type {{ step: number, cpu: number, wall: number }[]} */
const marks = [];
let c0 = cpuNow();
let w0 = performance.now();
const switchTo = (/** @type {string} */ n) => {
  const c = cpuNow();
  const w = performance.now();
  bucket(phase.name).cpu += c - c0;
  bucket(phase.name).wall += (w - w0) / 1000;
  c0 = c;
  w0 = w;
  phase.name = n;
};
const steps = Number(values.steps);
const controller = new AbortController();
const start = cpuNow();
try {
  await initializeLoraEvaWeights(peft, batches, {
    progressBar: false,
    signal: controller.signal,
    ...(values.factor === 'auto' ? {} : { factorOnBackend: values.factor === 'backend' }),
    forwardFn: async (m, b) => {
      switchTo('forward');
      try {
        return await forwardFnDefault(m, b);
      } finally {
        // on webgpu the forward's kernels are only queued: wait for them, so that their GPU time is
        // the forward's and not the first read-back's
        const gpu = /** @type {any} */ (tf.backend());
        if (gpu.device?.queue) {
          gpu.submitQueue?.();
          await gpu.device.queue.onSubmittedWorkDone();
        }
        switchTo('ipca');
      }
    },
    onProgress: (p) => {
      switchTo('between');
      marks.push({ step: p.step, cpu: cpuNow() - start, wall: p.elapsedMs / 1000 });
      if (p.step >= steps) controller.abort();
    },
  });
} catch (e) {
  if (!(e instanceof Error && e.name === 'AbortError')) throw e;
}
switchTo('other');
const n = marks.length;
const per = (/** @type {number} */ x) => (x / n).toFixed(3);
console.log(
  `backend ${backend}, q×q factorisations: ${values.factor}; ${n} batches of ${rows || settings.batch_size}x${settings.seq_len}; process CPU seconds`,
);
console.log('| phase | read-backs / batch | kernels / batch | CPU s / batch | wall s / batch |');
console.log('|---|---:|---:|---:|---:|');
for (const [k, v] of Object.entries(totals))
  console.log(`| ${k} | ${per(v.reads)} | ${per(v.kernels)} | ${per(v.cpu)} | ${per(v.wall)} |`);
console.log('per step (cumulative CPU s):', marks.map((m) => `${m.step}:${m.cpu.toFixed(1)}`).join(' '));
peft.dispose();
