/**
 * The browser smoke run of @lora/core, bundled into a page by src/browser.test.ts: a PEFT-saved DoRA
 * adapter is fetched as in-memory files and must give PEFT's output; a safe mergeAndUnload (asynchronous)
 * must give PEFT's merged weights; an adapter made and trained here is serialized in memory, loaded
 * back from those bytes and gives the same output. Per backend (cpu, webgpu); results in `window.__lora`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, maxRelativeError, parseSafetensors } from '@lora/tensor';
import { AdamW, type Module, manualSeed, withoutInit } from '@lora/nn';
import { getPeftModel, loadAdapter, serializeAdapter } from '@lora/core';
import { Net } from '../src/fixture-net.test-util';
import { magnitudePruneTensor } from '../src/combination/magnitude-prune';
import { magnitudePruneArray } from '../src/combination/merge-arrays';

/** What the page reports per backend (read by src/browser.test.ts). */
export interface SmokeResult {
  backend: string;
  adapter: string;
  outputRelErr: number;
  mergedRelErr: number;
  lossFirst: number;
  lossLast: number;
  reloadRelErr: number;
  /** Entries where the backend's TIES trim (what webgpu runs) differs from the float32-array one. */
  pruneMismatches: number;
  leaked: number;
}

/** The backend's magnitude pruning against the host's, on a random tensor and on one with many ties at the cut. */
async function pruneMismatches(): Promise<number> {
  const random = Float32Array.from({ length: 300 * 200 }, (_, i) => (Math.sin(i * 12.9898) * 43758.5453) % 1);
  const tied = Float32Array.from({ length: 999 }, (_, i) => ((i * 7) % 4) * (i % 3 === 0 ? -1 : 1));
  let bad = 0;
  for (const density of [0.2, 0.5, 0.77]) {
    const inputs = [tf.tensor2d(random, [300, 200]), tf.tensor1d(tied)];
    const out = await magnitudePruneTensor(inputs, density);
    for (const [i, x] of [random, tied].entries()) {
      const want = magnitudePruneArray(x, density);
      const got = await (out[i] as tf.Tensor).data();
      for (let j = 0; j < want.length; j++) if ((got[j] as number) !== (want[j] as number)) bad++;
    }
    tf.dispose([...inputs, ...out]);
  }
  return bad;
}

const bytes = async (url: string) => new Uint8Array(await (await fetch(url)).arrayBuffer());

async function run(backend: 'cpu' | 'webgpu'): Promise<SmokeResult> {
  const info = await initBackend(backend, {
    importers: {
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    },
  });
  const before = tf.memory().numTensors;
  const baseBytes = await bytes('/fixtures/base.safetensors');
  const want = parseSafetensors(await bytes('/fixtures/expected.safetensors')).tensors;
  const base = (): Net => {
    const net = withoutInit(() => new Net());
    const { tensors } = parseSafetensors(baseBytes);
    net.loadStateDict(tensors);
    tf.dispose(Object.values(tensors));
    return net.eval() as Net;
  };
  // a PEFT-saved adapter from in-memory files
  const files = {
    'adapter_config.json': await bytes('/fixtures/peft-dora/adapter_config.json'),
    'adapter_model.safetensors': await bytes('/fixtures/peft-dora/adapter_model.safetensors'),
  };
  const { model: peft } = await loadAdapter(base(), files);
  const y = peft.call(want.x) as tf.Tensor;
  const outputRelErr = maxRelativeError(await y.data(), await (want['peft-dora.out'] as tf.Tensor).data());
  const merged = (await peft.mergeAndUnload({ safeMerge: true })) as Module;
  const mergedRelErr = maxRelativeError(
    await (merged.stateDict()['layers.1.mlp.weight'] as tf.Tensor).data(),
    await (want['peft-dora.merged.layers.1.mlp.weight'] as tf.Tensor).data(),
  );
  merged.dispose();
  // an adapter trained here, serialized in memory and loaded back from those bytes
  manualSeed(1);
  const fresh = getPeftModel(base(), { r: 4, loraAlpha: 8, useDora: true, targetModules: ['q_proj', 'mlp'] });
  fresh.train();
  const opt = new AdamW(fresh.trainableParameters(), { lr: 1e-2 });
  const target = tf.tidy(() => tf.neg(want.base_out as tf.Tensor));
  const losses: number[] = [];
  for (let i = 0; i < 8; i++) {
    const { value, grads } = tf.variableGrads(
      () => tf.mean(tf.square(tf.sub(fresh.call(want.x) as tf.Tensor, target))) as tf.Scalar,
      fresh.trainableParameters(),
    );
    opt.step(grads);
    losses.push((await value.data())[0] as number);
    tf.dispose([value, ...Object.values(grads)]);
  }
  fresh.eval();
  const yFresh = fresh.call(want.x) as tf.Tensor;
  const saved = await serializeAdapter(fresh);
  const { model: back } = await loadAdapter(base(), {
    'adapter_config.json': saved.config,
    'adapter_model.safetensors': saved.weights,
  });
  const yBack = back.call(want.x) as tf.Tensor;
  const reloadRelErr = maxRelativeError(await yBack.data(), await yFresh.data());
  const pruneBad = await pruneMismatches();
  tf.dispose([y, yFresh, yBack, target, ...Object.values(want)]);
  opt.dispose();
  fresh.dispose();
  back.dispose();
  return {
    backend: info.name,
    adapter: info.adapter,
    outputRelErr,
    mergedRelErr,
    lossFirst: losses[0] as number,
    lossLast: losses.at(-1) as number,
    reloadRelErr,
    pruneMismatches: pruneBad,
    leaked: tf.memory().numTensors - before,
  };
}

const state: { done: boolean; results: SmokeResult[]; errors: string[] } = { done: false, results: [], errors: [] };
(window as unknown as { __lora: typeof state }).__lora = state;
for (const backend of ['cpu', 'webgpu'] as const) {
  try {
    state.results.push(await run(backend));
  } catch (e) {
    state.errors.push(`${backend}: ${(e as Error).message}`);
  }
}
state.done = true;
