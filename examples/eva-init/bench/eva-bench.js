// @ts-check
// Our side of the EVA benchmark (see README.md here): initializeLoraEvaWeights on the checkpoint and
// batches `peft_eva_bench.py make` wrote, on one backend, timed as the PEFT side is (after one warm-up
// forward, the whole EVA call). Writes DIR/ours-<backend>.json and prints it.
//
//   node eva-bench.js DIR [--backend webgpu|wasm|cpu] [--time-limit SECONDS] [--precision float32|float64]
//                         [--max-passes N] [--max-steps N] [--factor auto|backend|host]
// Bundled for the GPU machine with ../../../../shared/device/pack (see README.md).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { initializeLoraEvaWeights } from '@lora/eva';
import { LlamaForCausalLM } from '@lora/models';
import { parseSafetensors } from '@lora/tensor';
import { startBackend } from '../src/backend.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    backend: { type: 'string', default: 'webgpu' },
    'time-limit': { type: 'string' },
    precision: { type: 'string', default: 'float32' },
    // PEFT has no cap on passes: a high one here, so that both sides stop on convergence
    'max-passes': { type: 'string', default: '1000' },
    // stop after this many batches (both sides time the same first batches; 0: until convergence)
    'max-steps': { type: 'string', default: process.env.EVA_BENCH_STEPS ?? '0' },
    // where the randomized SVD's q×q factorisations run: 'backend' (webgpu's default), 'host' (CPU,
    // float64: a read-back per CholeskyQR pass), 'auto' (the backend's default)
    factor: { type: 'string', default: 'auto' },
  },
});
const dir = positionals[0];
if (!dir) throw new Error('usage: eva-bench.js DIR [--backend webgpu|wasm|cpu] [--time-limit S]');
const backend = /** @type {'webgpu' | 'wasm' | 'cpu'} */ (values.backend);
const info = await startBackend(backend, dirname(new URL(import.meta.url).pathname));
const settings = JSON.parse(readFileSync(join(dir, 'settings.json'), 'utf8'));
const t = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'batches.safetensors')))).tensors;
const batches = Array.from({ length: settings.batches }, (_, i) => ({
  inputIds: /** @type {tf.Tensor2D} */ (t[`input_ids.${i}`]),
  attentionMask: /** @type {tf.Tensor2D} */ (t[`attention_mask.${i}`]),
}));
const loadStart = performance.now();
const model = await LlamaForCausalLM.fromPretrained(join(dir, 'model'));
const loadSeconds = (performance.now() - loadStart) / 1000;
// warm-up: one forward (kernels compiled, weights on the device), as the PEFT side does
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
const limit = values['time-limit'] ? Number(values['time-limit']) : undefined;
let steps = 0;
/** @type {import('@lora/eva').EvaReport | undefined} */
let report;
const maxSteps = Number(values['max-steps']);
const controller = new AbortController();
const signals = [controller.signal, ...(limit ? [AbortSignal.timeout(limit * 1000)] : [])];
const t0 = performance.now();
const c0 = process.cpuUsage();
let finished = true;
/** @type {Record<string, number>} */
let ranks = {};
try {
  ({ ranks } = await initializeLoraEvaWeights(peft, batches, {
    progressBar: false,
    precision: /** @type {'float32'} */ (values.precision),
    maxPasses: Number(values['max-passes']),
    ...(values.factor === 'auto' ? {} : { factorOnBackend: values.factor === 'backend' }),
    signal: AbortSignal.any(signals),
    onProgress: (p) => {
      steps = p.step;
      if (maxSteps && p.step >= maxSteps) controller.abort();
      const line = `${p.convergedLayers}/${p.totalLayers} layers converged after ${p.step} batches, ${(p.elapsedMs / 1000).toFixed(1)} s`;
      if (process.stderr.isTTY) process.stderr.write(`\r${line}`);
      else if (p.step % 10 === 0) process.stderr.write(`${line}\n`);
    },
    onComplete: (r) => {
      report = r;
    },
  }));
} catch (e) {
  if (!(e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError'))) throw e;
  finished = false;
}
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(c0);
if (process.stderr.isTTY) process.stderr.write('\n');
const out = {
  impl: values.factor === 'host' ? '@lora/eva (q×q on the host)' : '@lora/eva',
  backend: `${info.name} (${info.adapter})`,
  seconds,
  cpuSeconds: (cpu.user + cpu.system) / 1e6,
  steps: report?.steps ?? steps,
  passes: report?.passes,
  finished,
  precision: values.precision,
  loadSeconds,
  ranks,
};
writeFileSync(
  join(dir, `ours-${backend}${values.factor === 'host' ? '-host' : ''}.json`),
  JSON.stringify(out, null, 1),
);
console.log(JSON.stringify({ ...out, ranks: undefined }));
peft.dispose();
tf.dispose(Object.values(t));
