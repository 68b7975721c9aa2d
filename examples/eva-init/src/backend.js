// @ts-check
// Starts a tfjs backend for the experiment and the benchmark, in Node or bundled for the GPU machine:
// the optional backend packages are imported by literal imports (a bundler includes them; @lora/tensor's
// own by-name import cannot be followed into a bundle), and in a bundle the wasm binaries are looked
// for beside it (bench/pack.sh puts them there).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '@lora/tensor';

/** @type {import('@lora/tensor').InitBackendOptions['importers']} */
const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};

/**
 * @param {'cpu' | 'wasm' | 'webgpu'} name
 * @param {string} bundleDir  the running file's folder (a bundle's wasm binaries sit there)
 */
export function startBackend(name, bundleDir) {
  const wasmDir =
    process.env.LORA_WASM_DIR ?? (existsSync(join(bundleDir, 'tfjs-backend-wasm-simd.wasm')) ? bundleDir : undefined);
  return initBackend(name, {
    importers,
    ...(name === 'wasm' && wasmDir ? { wasm: { wasmPaths: `${wasmDir}/` } } : {}),
  });
}
