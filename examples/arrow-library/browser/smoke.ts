/**
 * The browser run of Arrow on a Llama, bundled into a page by src/browser.test.ts: the tiny Llama's
 * checkpoint and the five PEFT-saved experts (and the two general adapters) are fetched as in-memory
 * files, `LlamaForCausalLM.fromPretrained` and `createArrowModel` take them as they are, and the routed
 * logits must be PEFT's (top-2 with GenKnowSub; plain top-2 is the same path, checked in Node). Per backend (cpu, webgpu); results in
 * `window.__lora`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { createArrowModel } from '@lora/arrow';
import { LlamaForCausalLM } from '@lora/models';
import { initBackend, maxRelativeError, parseSafetensors } from '@lora/tensor';

/** What the page reports per backend (read by src/browser.test.ts). */
export interface LlamaSmokeResult {
  backend: string;
  gksRelErr: number;
  leaked: number;
}

const bytes = async (url: string) => new Uint8Array(await (await fetch(url)).arrayBuffer());
const files = async (dir: string, names: string[]) =>
  Object.fromEntries(await Promise.all(names.map(async (n) => [n, await bytes(`/fixtures/${dir}/${n}`)] as const)));
const ADAPTER = ['adapter_config.json', 'adapter_model.safetensors'];

async function run(backend: 'cpu' | 'webgpu'): Promise<LlamaSmokeResult> {
  const info = await initBackend(backend, {
    importers: {
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    },
  });
  const before = tf.memory().numTensors;
  const base = await files('tiny-llama', ['config.json', 'model.safetensors']);
  const tasks = await Promise.all([0, 1, 2, 3, 4].map((i) => files(`task-${i}`, ADAPTER)));
  const general = await Promise.all([0, 1].map((i) => files(`general-${i}`, ADAPTER)));
  const want = parseSafetensors(await bytes('/fixtures/expected.safetensors')).tensors;
  const model = await createArrowModel(
    await LlamaForCausalLM.fromPretrained(base),
    tasks,
    { topK: 2, rngSeed: 42, useGks: true },
    { generalAdapterPaths: general, warn: () => {} },
  );
  const { logits } = (model.model as LlamaForCausalLM).forward(want.ids as tf.Tensor2D);
  const gksRelErr = maxRelativeError(await logits.data(), await (want['gks.logits'] as tf.Tensor).data());
  logits.dispose();
  model.dispose();
  tf.dispose(Object.values(want));
  return { backend: info.name, gksRelErr, leaked: tf.memory().numTensors - before };
}

const results: LlamaSmokeResult[] = [];
const errors: string[] = [];
for (const backend of ['cpu', 'webgpu'] as const) {
  try {
    results.push(await run(backend));
  } catch (e) {
    errors.push(`${backend}: ${(e as Error).message}`);
  }
}
(window as unknown as { __lora: unknown }).__lora = { done: true, results, errors };
