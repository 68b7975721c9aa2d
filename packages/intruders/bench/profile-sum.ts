/**
 * Per-phase process CPU time of one layer's analysis on the 123M Llama's shapes by the paths of
 * `reduce-layer.ts` (random W with std 0.02, a random r 16 adapter as bench/peer_intruders.py draws
 * it): W + ΔW's leading triplets by subspace iteration on the backend, the certificate (Lanczos on
 * W·Wᵀ, or WᵀW and a Cholesky floor for a tall W), and for comparison W's SVD with the exact cosines. Not a peer comparison.
 *   npx esbuild bench/profile-sum.ts --bundle --platform=node --format=esm --packages=external --outfile=.bench/sum.mjs && node .bench/sum.mjs
 *   (LORA_BACKEND, default wasm; SHAPES=1024x1024,…; NO_SVD=1 skips W's SVD)
 */
import * as tf from '@tensorflow/tfjs-core';
import { matrix64 } from '@lora/linalg';
import { initBackend } from '@lora/tensor';
import { analyseFromSum, sumTriplets } from '../src/analyse-sum';
import { certifySteps } from '../src/certify';
import { WeightSvdCache } from '../src/weight-svd-cache';

const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};
const backend = (process.env.LORA_BACKEND ?? 'wasm') as 'wasm';
await initBackend(backend, { importers });
const shapes = (process.env.SHAPES ?? '1024x1024,256x1024,2816x1024,1024x2816')
  .split(',')
  .map((s) => s.split('x').map(Number) as [number, number]);
let seed = 12345;
const uniform = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return (seed + 0.5) / 2147483648;
};
const gauss = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
const cpu = async <T>(f: () => Promise<T> | T): Promise<[T, number]> => {
  const c0 = process.cpuUsage();
  const value = await f();
  const used = process.cpuUsage(c0);
  return [value, (used.user + used.system) / 1e6];
};
const r = 16;
const cache = new WeightSvdCache();
console.log(`backend ${backend}; process CPU seconds per phase`);
console.log(
  '| W (m×n) | W + ΔW top 10 (iterations) | bounds (steps) | max bound | W SVD | exact cosines | max cosine |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const [at, [m, n]] of shapes.entries()) {
  const w = tf.tensor2d(
    Float32Array.from({ length: m * n }, () => 0.02 * gauss()),
    [m, n],
  );
  const left = matrix64(
    m,
    r,
    Float64Array.from({ length: m * r }, () => 0.05 * gauss()),
  );
  const bound = 1 / Math.sqrt(n);
  const right = matrix64(
    r,
    n,
    Float64Array.from({ length: r * n }, () => bound * (2 * uniform() - 1)),
  );
  await cpu(() => sumTriplets(w, left, right, 2, 10).then((t) => t.uTensor.dispose())); // warm-up
  const [top, tTop] = await cpu(() => sumTriplets(w, left, right, 2, 10));
  console.error(`${m}x${n}: products ${top.iterations}, converged ${top.converged}`);
  const steps = certifySteps(0.5);
  const [certified, tBound] = await cpu(() => analyseFromSum(top, w, null, 0.5));
  const bounds = certified ? Math.max(...certified.cosine).toFixed(3) : 'not certified';
  let tSvd = 0;
  let tCos = 0;
  let cosMax = '–';
  if (!process.env.NO_SVD) {
    const [weight, t1] = await cpu(() => cache.svdOf(`${at}`, null, () => tf.clone(w)));
    tSvd = t1;
    const [a, t2] = await cpu(() => analyseFromSum(top, null, weight, 0.5));
    tCos = t2;
    cosMax = Math.max(...(a?.cosine ?? [])).toFixed(3);
  }
  console.log(
    `| ${m}×${n} | ${tTop.toFixed(2)} (${top.iterations}${top.converged ? '' : ', not converged'}) | ${tBound.toFixed(2)} (${steps}) | ${bounds} | ${tSvd.toFixed(2)} | ${tCos.toFixed(3)} | ${cosMax} |`,
  );
  top.uTensor.dispose();
  w.dispose();
}
cache.dispose();
