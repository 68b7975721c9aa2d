/**
 * Per-phase process CPU time of one layer's analysis on the 123M Llama's shapes by the paths of
 * `reduce-layer.ts` (random W with std 0.02, a random r 16 adapter as bench/peer_intruders.py draws
 * it): W + ΔW's leading triplets by subspace iteration on the backend, the certificate (Lanczos on
 * W·Wᵀ, or WᵀW and a Cholesky floor for a tall W), and for comparison W's SVD with the exact cosines. Not a peer comparison.
 *   npx esbuild bench/profile-sum.ts --bundle --platform=node --format=esm --packages=external --outfile=.bench/sum.mjs && node .bench/sum.mjs
 *   (LORA_BACKEND, default wasm; SHAPES=1024x1024,…; NO_SVD=1 skips W's SVD)
 */
import * as tf from '@tensorflow/tfjs-core';
import { cpu, randomLayer, setUp } from './profile-setup';
import { analyseFromSum, sumTriplets } from '../src/analyse-sum';
import { certifySteps } from '../src/certify';
import { WeightSvdCache } from '../src/weight-svd-cache';

const { backend, shapes } = await setUp();

const r = 16;
const cache = new WeightSvdCache();
console.log(`backend ${backend}; process CPU seconds per phase`);
console.log(
  '| W (m×n) | W + ΔW top 10 (iterations) | bounds (steps) | max bound | W SVD | exact cosines | max cosine |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const [at, [m, n]] of shapes.entries()) {
  const layer = randomLayer(m, n, r);
  const w = tf.tensor2d(layer.w, [m, n]);
  const { left, right } = layer;
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
