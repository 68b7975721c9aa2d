/**
 * @lora/core against PEFT's fixtures on one backend in plain Node (no vitest), for the GPU machine:
 * PEFT-saved adapters of every layer kind load and give PEFT's outputs, merge (safely, asynchronously)
 * into PEFT's weights, and a DoRA adapter trains. `../shared/device/pack packages/core/scripts/check-core-webgpu.ts`,
 * then `LORA_CORE_FIXTURES=packages/core/__fixtures__ $NODE .device/bundle/check-core-webgpu.mjs webgpu` there.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type BackendName, initBackend, maxRelativeError } from '@lora/tensor';
import { AdamW, type Module, manualSeed } from '@lora/nn';
import { type PeftModel, getPeftModel, loadAdapter } from '@lora/core';
import { FIX, baseNet, convDoraNet, gptNet, readFixture } from '../src/fixture-nets.test-util';
import { tokNet } from '../src/token-nets.test-util';

const name = (process.argv[2] ?? 'webgpu') as BackendName;
const info = await initBackend(name, {
  importers: {
    '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  },
});
console.log(`backend ${info.name} on ${info.adapter}; fixtures ${FIX}`);

let failed = 0;
async function check(label: string, got: tf.Tensor, want: tf.Tensor | undefined, tol = 1e-5): Promise<void> {
  if (!want) throw new Error(`no expected tensor for ${label}`);
  const err = maxRelativeError(await got.data(), await want.data());
  const ok = err < tol;
  if (!ok) failed++;
  console.log(`  ${ok ? 'ok  ' : 'FAIL'}  ${label}: rel err ${err.toExponential(2)}`);
}

const startTensors = tf.memory().numTensors;
// PEFT-saved adapters: output, then merged (safe merge, async) weights
const expected = readFixture('expected.safetensors');
for (const adapter of ['peft-qv', 'peft-patterns', 'peft-regex-bias', 'peft-dora']) {
  const { model: peft } = await loadAdapter(baseNet(), join(FIX, adapter));
  const y = peft.call(expected.x) as tf.Tensor;
  await check(`${adapter} output`, y, expected[`${adapter}.out`]);
  const merged = (await peft.mergeAndUnload({ safeMerge: true })) as Module;
  for (const k of ['layers.1.mlp.weight', 'layers.0.q_proj.weight']) {
    const w = merged.stateDict()[k] as tf.Tensor;
    await check(`${adapter} merged ${k}`, w, expected[`${adapter}.merged.${k}`]);
  }
  y.dispose();
  merged.dispose();
}
tf.dispose(Object.values(expected));

// DoRA on Embedding and convolutions, LoRA on a grouped convolution
const conv = readFixture('convdora-expected.safetensors');
for (const [adapter, key] of [
  ['convdora-dora', 'dora.out'],
  ['convdora-grouped', 'grouped.out'],
  ['convdora-grouped-dora', 'grouped_dora.out'],
] as const) {
  const { model: peft } = await loadAdapter(convDoraNet(), join(FIX, adapter));
  const y = peft.call(conv.ids) as tf.Tensor;
  await check(`${adapter} output`, y, conv[key]);
  y.dispose();
  peft.dispose();
}
tf.dispose(Object.values(conv));

// fan_in_fan_out on transformers' Conv1D (GPT-2-like)
const fifo = readFixture('fifo-expected.safetensors');
for (const adapter of ['fifo-plain', 'fifo-dora', 'fifo-bias', 'fifo-patterns']) {
  const { model: peft } = await loadAdapter(gptNet(), join(FIX, adapter));
  const y = peft.call(fifo.x) as tf.Tensor;
  await check(`${adapter} output`, y, fifo[`${adapter}.out`]);
  y.dispose();
  peft.dispose();
}
tf.dispose(Object.values(fifo));

// trainable tokens (plain and tied), merged
const tokens = readFixture('tokens-expected.safetensors');
for (const [adapter, tied] of [
  ['tokens-list', false],
  ['tokens-dict', false],
  ['tokens-tied', true],
] as const) {
  const { model: peft } = await loadAdapter(tokNet(tied), join(FIX, `peft-${adapter}`));
  const y = peft.call(tokens.ids) as tf.Tensor;
  await check(`${adapter} output`, y, tokens[`${adapter}.out`]);
  await (peft as PeftModel).mergeAdapter({ safeMerge: true });
  const ym = peft.call(tokens.ids) as tf.Tensor;
  await check(`${adapter} merged output`, ym, tokens[`${adapter}.merged_out`] ?? tokens[`${adapter}.out`]);
  tf.dispose([y, ym]);
  peft.dispose();
}
tf.dispose(Object.values(tokens));

// a DoRA adapter trains on this backend: the loss falls, base weights stay
const data = readFixture('expected.safetensors');
manualSeed(3);
const peft = getPeftModel(baseNet(), { r: 4, loraAlpha: 8, useDora: true, targetModules: ['q_proj', 'mlp', 'head'] });
peft.train();
const target = tf.tidy(() => tf.mul(data.base_out as tf.Tensor, -1));
const baseBefore = await (peft.model.stateDict()['layers.0.q_proj.base_layer.weight'] as tf.Tensor).data();
const opt = new AdamW(peft.trainableParameters(), { lr: 1e-2 });
const losses: number[] = [];
for (let i = 0; i < 20; i++) {
  const { value, grads } = tf.variableGrads(
    () => tf.mean(tf.square(tf.sub(peft.call(data.x) as tf.Tensor, target))) as tf.Scalar,
    peft.trainableParameters(),
  );
  opt.step(grads);
  losses.push((await value.data())[0] as number);
  tf.dispose([value, ...Object.values(grads)]);
}
const baseAfter = await (peft.model.stateDict()['layers.0.q_proj.base_layer.weight'] as tf.Tensor).data();
const trained =
  (losses.at(-1) as number) < (losses[0] as number) * 0.9 && maxRelativeError(baseAfter, baseBefore) === 0;
if (!trained) failed++;
console.log(
  `  ${trained ? 'ok  ' : 'FAIL'}  DoRA training: loss ${losses[0]?.toFixed(4)} → ${losses.at(-1)?.toFixed(4)} in 20 AdamW steps, base weights unchanged`,
);
opt.dispose();
peft.dispose();
tf.dispose([target, ...Object.values(data)]);
const leaked = tf.memory().numTensors - startTensors;
if (leaked !== 0) failed++;
console.log(`  ${leaked === 0 ? 'ok  ' : 'FAIL'}  tensors left after everything was disposed: ${leaked}`);
console.log(failed ? `${failed} failed` : 'all passed');
process.exit(failed ? 1 : 0);
