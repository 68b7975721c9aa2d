// @ts-check
/**
 * The λ experiment (src/experiment.js) as a bundle for the GPU machine, whose 16 idle cores and GPU
 * run it in minutes where this 2-core machine, shared, takes an hour: writes $OUT/lambda.json, which
 * `node src/main.js --from lambda.json` plots here. Paths from the environment: FORTUNE_DIR (the
 * fortune-llama example folder, default examples/fortune-llama) and PRETRAIN_FILE (default
 * .devrun/intruders/pretrain.heldout.txt); LORA_BACKEND (default webgpu), STEPS, and for a smoke run
 * EPSILONS and LAMBDAS (comma-separated), PRETRAIN_ENTRIES, TASK_ENTRIES, TARGETS (comma-separated).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '@lora/tensor';
import { DEFAULTS, runExperiment } from '../src/experiment.js';

const env = process.env;
const backend = /** @type {import('@lora/tensor').BackendName} */ (env.LORA_BACKEND ?? 'webgpu');
const info = await initBackend(backend, {
  importers: {
    '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
    '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
  },
});
console.log(`backend: ${info.name} (${info.adapter})`);
const fortune = env.FORTUNE_DIR ?? 'examples/fortune-llama';
const result = await runExperiment({
  steps: Number(env.STEPS ?? DEFAULTS.steps),
  ...(env.EPSILONS ? { thresholdEpsilons: env.EPSILONS.split(',').map(Number) } : {}),
  ...(env.LAMBDAS ? { lambdas: env.LAMBDAS.split(',').map(Number) } : {}),
  ...(env.PRETRAIN_ENTRIES ? { pretrainEntries: Number(env.PRETRAIN_ENTRIES) } : {}),
  ...(env.TASK_ENTRIES ? { taskEntries: Number(env.TASK_ENTRIES) } : {}),
  ...(env.TARGETS ? { targetModules: env.TARGETS.split(',') } : {}),
  modelDir: join(fortune, 'model'),
  dataDir: join(fortune, 'data'),
  pretrainFile: env.PRETRAIN_FILE ?? '.devrun/intruders/pretrain.heldout.txt',
});
const out = join(env.OUT ?? '.', 'lambda.json');
writeFileSync(out, `${JSON.stringify({ backend: info, date: new Date().toISOString(), ...result }, null, 1)}\n`);
console.log(`wrote ${out}`);
