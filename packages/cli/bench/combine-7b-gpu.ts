/**
 * The combine bench on the GPU machine: the combination `lora combine` runs (combineAdapters on the two
 * adapter directories, the result written as PEFT's files) on webgpu (the H200 through Dawn), and PEFT
 * on torch CUDA for all 32 layers. Bundle here with `../shared/device/pack packages/cli/bench/combine-7b-gpu.ts`;
 * run there from the project root: `source .device/setup.sh && $NODE .device/bundle/combine-7b-gpu.mjs`.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { combineAdapters, loraConfigToJson } from '@lora/core';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { readAdapter } from '../src/shared';
import { combineBench } from './combine-bench';

const root = process.env.LORA_ROOT ?? process.cwd();
await combineBench({
  dir: join(root, 'packages', 'cli', '.bench', 'combine-7b'),
  peerScript: join(root, 'packages', 'cli', 'bench', 'peer_combine.py'),
  peerLayers: Number(process.env.PEER_LAYERS ?? 32),
  peerDevice: 'cuda',
  init: () =>
    initBackend('webgpu', {
      importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
    }),
  combine: async (a, b, out) => {
    const adapters = [await readAdapter(a), await readAdapter(b)];
    const mix = await combineAdapters(adapters, [0.7, 1.3], {
      combinationType: 'ties_svd',
      density: 0.5,
      onProgress: (done, total, path) => process.stderr.write(`  combined module ${done}/${total} ${path}\n`),
    });
    // the bench's own output folder, replaced each run (lora combine's --out checks are not what is timed)
    await rm(out, { recursive: true, force: true });
    await mkdir(out, { recursive: true });
    await writeFile(
      join(out, 'adapter_model.safetensors'),
      await serializeSafetensors(mix.tensors, { metadata: { format: 'pt' } }),
    );
    await writeFile(join(out, 'adapter_config.json'), loraConfigToJson(mix.config));
    tf.dispose([...Object.values(mix.tensors), ...adapters.flatMap((x) => Object.values(x.tensors))]);
  },
});
