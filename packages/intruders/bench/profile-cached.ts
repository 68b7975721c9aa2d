/**
 * Per-phase process CPU time of one layer's intruder reduction on the 123M Llama's shapes (random
 * W with std 0.02, a random r 16 adapter as bench/peer_intruders.py draws it): W's SVD (cold), the
 * core K, K's leading triplets, the lift to the full spaces, the mitigation. Not a peer comparison:
 * it says where the time goes.
 *   npm run bench:profile -w @lora/intruders     (LORA_BACKEND, default wasm; SHAPES=1024x1024,256x1024,…;
 *                                                CYCLE_DIM, TOL: topSingularTriplets options)
 */
import * as tf from '@tensorflow/tfjs-core';
import { cpu, randomLayer, setUp } from './profile-setup';
import { analyseMatrix, buildCore, denseTriplets, reduceMatrix } from '../src/reduce-matrix';
import { topSingularTriplets } from '../src/top-singular';
import { WeightSvdCache } from '../src/weight-svd-cache';

const { backend, shapes } = await setUp();

const r = 16;
const cache = new WeightSvdCache();
console.log(`backend ${backend}; process CPU seconds per phase`);
console.log('| W (m×n) | W SVD (cold) | core K | K triplets | how | analysis (core + triplets + lift) | mitigation |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const [at, [m, n]] of shapes.entries()) {
  const layer = randomLayer(m, n, r);
  const w = tf.tensor2d(layer.w, [m, n]);
  const [weight, tSvd] = await cpu(() => cache.svdOf(`${m}x${n}#${at}`, null, () => w));
  const { left, right } = layer;
  const problem = { m, n, weight, left, right, scaling: 2 };
  const [{ core }, tCore] = await cpu(() => buildCore(problem));
  const t = Math.min(10, weight.S.length);
  const [krylov, tTop] = await cpu(() =>
    topSingularTriplets(core, t, {
      ...(process.env.CYCLE_DIM ? { cycleDimension: Number(process.env.CYCLE_DIM) } : {}),
      ...(process.env.TOL ? { tol: Number(process.env.TOL) } : {}),
    }),
  );
  let how = krylov
    ? `krylov ${krylov.dimension}×${krylov.cycles}, residual ${krylov.residual.toExponential(1)}`
    : 'gave up';
  let tTotal = tTop;
  if (!krylov) {
    const [, tDense] = await cpu(() => denseTriplets(core, t));
    how += ` + dense ${tDense.toFixed(2)} s`;
    tTotal += tDense;
  }
  // warm (the JIT has seen the code: a model has dozens of layers); the last of three runs
  let [analysis, tAnalysis] = await cpu(() => analyseMatrix(problem, 10));
  for (let i = 0; i < 2; i++) [analysis, tAnalysis] = await cpu(() => analyseMatrix(problem, 10));
  const [result, tMit] = await cpu(() =>
    reduceMatrix(problem, { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.75 }, analysis),
  );
  console.log(
    `| ${m}×${n} | ${tSvd.toFixed(2)} | ${tCore.toFixed(3)} | ${tTotal.toFixed(3)} | ${how} | ${tAnalysis.toFixed(2)} (${analysis.method.kind}) | ${tMit.toFixed(3)} (${result.intruders.length} intruders) |`,
  );
}
cache.dispose();
console.log(`tensors left: ${tf.memory().numTensors}`);
