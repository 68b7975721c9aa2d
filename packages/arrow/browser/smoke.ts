/**
 * The browser smoke run of @lora/arrow, bundled into a page by src/browser.test.ts: the fixtures' task
 * and general adapters are fetched as in-memory files, `createArrowModel` routes over them with
 * GenKnowSub, and the logits must be PEFT's; the same with exact prototypes (read back asynchronously,
 * which a webgpu forward cannot do). Per backend (cpu, webgpu); results in `window.__lora`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, maxRelativeError, parseSafetensors } from '@lora/tensor';
import { withoutInit } from '@lora/nn';
import { createArrowModel } from '@lora/arrow';
import { ArrowNet } from '../src/arrow-net-module.test-util';

/** What the page reports per backend (read by src/browser.test.ts). */
export interface SmokeResult {
  backend: string;
  powerRelErr: number;
  exactRelErr: number;
  leaked: number;
}

const bytes = async (url: string) => new Uint8Array(await (await fetch(url)).arrayBuffer());
const adapter = async (dir: string) => ({
  'adapter_config.json': await bytes(`/fixtures/${dir}/adapter_config.json`),
  'adapter_model.safetensors': await bytes(`/fixtures/${dir}/adapter_model.safetensors`),
});

async function run(backend: 'cpu' | 'webgpu'): Promise<SmokeResult> {
  const info = await initBackend(backend, {
    importers: {
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    },
  });
  const before = tf.memory().numTensors;
  const baseBytes = await bytes('/fixtures/net-base.safetensors');
  const want = parseSafetensors(await bytes('/fixtures/expected.safetensors')).tensors;
  const base = (): ArrowNet => {
    const net = withoutInit(() => new ArrowNet());
    const { tensors } = parseSafetensors(baseBytes);
    net.loadStateDict(tensors);
    tf.dispose(Object.values(tensors));
    return net.eval() as ArrowNet;
  };
  const tasks = await Promise.all(['task-a', 'task-b', 'task-c', 'task-d', 'task-e'].map(adapter));
  const general = await Promise.all(['general-a', 'general-b'].map(adapter));
  const relErr = async (prototypes: 'power-iteration' | 'exact', key: string) => {
    const model = await createArrowModel(
      base(),
      tasks,
      { topK: 2, useGks: true, rngSeed: 42 },
      {
        generalAdapterPaths: general,
        prototypes,
        warn: () => {},
      },
    );
    const y = model.call(want.ids as tf.Tensor) as tf.Tensor;
    const err = maxRelativeError(await y.data(), await (want[key] as tf.Tensor).data());
    y.dispose();
    model.dispose();
    return err;
  };
  const powerRelErr = await relErr('power-iteration', 'gks.out');
  const exactRelErr = await relErr('exact', 'gks.exact.out');
  tf.dispose(Object.values(want));
  return { backend: info.name, powerRelErr, exactRelErr, leaked: tf.memory().numTensors - before };
}

const results: SmokeResult[] = [];
const errors: string[] = [];
for (const b of ['cpu', 'webgpu'] as const) {
  try {
    results.push(await run(b));
  } catch (e) {
    errors.push(`${b}: ${(e as Error).message}`);
  }
}
(window as unknown as { __lora: unknown }).__lora = { done: true, results, errors };
