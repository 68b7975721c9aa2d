/**
 * Llama parity on one backend in plain Node (no vitest), for the GPU machine: loads each
 * transformers fixture, compares logits (1e-4), loss (1e-5) and the greedy generation.
 * `../shared/device/pack packages/models/scripts/check-models-webgpu.ts`, then run the bundle there.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type BackendName, initBackend, maxRelativeError, parseSafetensors } from '@lora/tensor';
import { LlamaForCausalLM } from '../src/index';

const name = (process.argv[2] ?? 'webgpu') as BackendName;
const root = process.argv[3] ?? join(process.cwd(), 'packages', 'models', '__fixtures__');
const info = await initBackend(name, {
  importers: {
    '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  },
});
console.log(`backend ${info.name} on ${info.adapter}`);
const summary = JSON.parse(readFileSync(join(root, 'expected.json'), 'utf8'));
let failed = 0;
for (const dir of readdirSync(root).filter((d) => statSync(join(root, d)).isDirectory() && d !== 'tokenizer')) {
  const model = await LlamaForCausalLM.fromPretrained(join(root, dir));
  model.eval();
  const { tensors: want } = parseSafetensors(new Uint8Array(readFileSync(join(root, dir, 'expected.safetensors'))));
  const { logits, loss } = model.forward(want.input_ids as tf.Tensor2D, {
    attentionMask: (await want.attention_mask!.array()) as number[][],
    labels: want.labels as tf.Tensor2D,
  });
  const logitErr = maxRelativeError(await logits.data(), await want.logits!.data());
  const lossErr = Math.abs(((await loss!.data())[0] as number) - summary.cases[dir].loss) / summary.cases[dir].loss;
  const prompt = ((await want.input_ids!.array()) as number[][])[0]!.slice(0, 5);
  const gen = await model.generate([prompt], { maxNewTokens: 10 });
  const same = JSON.stringify(gen[0]) === JSON.stringify(summary.cases[dir].generated);
  const ok = logitErr < 1e-4 && lossErr < 1e-5 && same;
  if (!ok) failed++;
  console.log(
    `  ${ok ? 'ok  ' : 'FAIL'}  ${dir}: logits rel err ${logitErr.toExponential(2)}, loss rel err ${lossErr.toExponential(2)}, greedy generation ${same ? 'identical' : `differs: ${gen[0]}`}`,
  );
  tf.dispose([logits, loss!, ...Object.values(want)]);
  model.dispose();
}
console.log(failed ? `${failed} failed` : 'all passed');
process.exit(failed ? 1 : 0);
