/**
 * The GPU-machine half of the models bench: the ~10M Llama on webgpu (the H200 through Dawn).
 * Bundle with ../shared/device/pack packages/models/bench/models-gpu.ts; run next to bench/peer.py there.
 */
import { initBackend } from '@lora/tensor';
import { benchLlama } from './cases';

const info = await initBackend('webgpu', {
  importers: { '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu') },
});
console.log(JSON.stringify({ backend: info.name, adapter: info.adapter, ...(await benchLlama()) }));
