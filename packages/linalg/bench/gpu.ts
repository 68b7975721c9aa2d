/**
 * The GPU-machine part of the bench: svdLowRank rank 16 of 4096² on webgpu (the H200 through Dawn),
 * plus the float64 CPU rows there. Bundle with ../shared/device/pack packages/linalg/bench/gpu.ts and
 * run `$NODE .device/bundle/gpu.mjs` next to `python3 packages/linalg/bench/peers.py` (torch CUDA peer).
 */
import { initBackend } from '@lora/tensor';
import { cpuRows, lowRankRow } from './cases';

const info = await initBackend('webgpu', {
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
console.log(`backend ${info.name} on ${info.adapter}`);
const rows = [await lowRankRow()];
if (process.argv[2] !== 'gpu-only') rows.push(...(await cpuRows(null)));
console.log(JSON.stringify(rows));
