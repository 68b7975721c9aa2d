/**
 * Runs the backend suite on one backend in plain Node (no vitest), for machines that have only
 * Node: `../shared/device/pack packages/tensor/scripts/check-webgpu.ts` bundles it for the GPU machine.
 * Usage: node check-webgpu.mjs [backend=webgpu]. Prints the adapter and each check; exit 1 on any failure.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type BackendName, initBackend } from '../src/backend';
import { backendSuite } from '../src/backend-suite.cases';

const name = (process.argv[2] ?? 'webgpu') as BackendName;
// Literal imports, so that a bundle of this script carries the backends with it; 'webgpu' (Dawn,
// a native addon) stays external and is found beside the bundle.
const info = await initBackend(name, {
  importers: {
    '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
    '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
    '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
  },
});
console.log(`backend ${info.name} on ${info.adapter}${info.software ? ' (software)' : ''}, tfjs ${tf.version_core}`);
let failed = 0;
for (const c of backendSuite) {
  const t0 = performance.now();
  try {
    await c.run();
    console.log(`  ok    ${c.name} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (e) {
    failed++;
    console.log(`  FAIL  ${c.name}: ${(e as Error).message}`);
  }
}
console.log(`${backendSuite.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
