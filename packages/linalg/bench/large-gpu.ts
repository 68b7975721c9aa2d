/**
 * The large suite on the GPU machine: our SVDs on webgpu (the H200 through Dawn), the peers with the
 * machine's python3 (torch CUDA and CPU, numpy). Bundle here with
 * `../shared/device/pack packages/linalg/bench/large-gpu.ts`; run there from the project root, after
 * `python3 packages/linalg/bench/peers_large.py make packages/linalg/.bench/large` has made the matrices:
 * `source .device/setup.sh && BENCH_PEER_THREADS=16 $NODE .device/bundle/large-gpu.mjs`.
 */
import { join } from 'node:path';
import { initBackend } from '@lora/tensor';
import { largeBench } from './large';

const root = process.env.LORA_ROOT ?? process.cwd();
// the runs of a case back to back after one wait for idle CPUs, as torch CUDA's are (see large.ts)
process.env.BENCH_QUIET_EACH ??= '0';
await largeBench({
  dir: join(root, 'packages', 'linalg', '.bench', 'large'),
  peersScript: join(root, 'packages', 'linalg', 'bench', 'peers_large.py'),
  init: () =>
    initBackend('webgpu', {
      importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
    }),
});
