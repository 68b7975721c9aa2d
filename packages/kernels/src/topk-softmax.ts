import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import { type WebGPUProgramLike, registerWebGPUKernel, runKernel, once } from './webgpu-program';

const INDICES = 'LoraTopKIndices';
const COEFFICIENTS = 'LoraTopKSoftmax';
/** The largest k the fused kernel keeps in registers; above it the composite runs. */
const MAX_FUSED_K = 16;

/**
 * One thread per row of `scores` [T, E]: a scan over the row that keeps the k largest (|score| with
 * `absolute`) in registers, largest first, the lower index first among equal ones (as tf.topk); then
 * either their indices or the softmax of the kept values / temperature.
 */
function program(
  kind: typeof INDICES | typeof COEFFICIENTS,
  rows: number,
  k: number,
  absolute: boolean,
): WebGPUProgramLike {
  const wg = 64;
  return {
    outputShape: [rows, k],
    shaderKey: `${kind}_k${k}_${absolute ? 'abs' : 'raw'}`,
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(rows / wg), 1, 1],
    variableNames: ['scores'],
    workgroupSize: [wg, 1, 1],
    uniforms: 'rows : i32, experts : i32, temperature : f32,',
    getUserCode: () => `
      fn main(index : i32) {
        if (index >= uniforms.rows) { return; }
        var bestV : array<f32, ${k}>;
        var bestI : array<i32, ${k}>;
        for (var j = 0; j < ${k}; j = j + 1) { bestV[j] = -uniforms.INFINITY; bestI[j] = 0; }
        let base = index * uniforms.experts;
        for (var e = 0; e < uniforms.experts; e = e + 1) {
          let v = ${absolute ? 'abs(scores[base + e])' : 'scores[base + e]'};
          if (v > bestV[${k - 1}]) {
            var j = ${k - 1};
            loop {
              if (j == 0 || !(v > bestV[j - 1])) { break; }
              bestV[j] = bestV[j - 1];
              bestI[j] = bestI[j - 1];
              j = j - 1;
            }
            bestV[j] = v;
            bestI[j] = e;
          }
        }
        ${
          kind === INDICES
            ? `for (var j = 0; j < ${k}; j = j + 1) { result[index * ${k} + j] = bestI[j]; }`
            : `var total = 0.0;
        for (var j = 0; j < ${k}; j = j + 1) { total = total + exp((bestV[j] - bestV[0]) / uniforms.temperature); }
        for (var j = 0; j < ${k}; j = j + 1) { result[index * ${k} + j] = exp((bestV[j] - bestV[0]) / uniforms.temperature) / total; }`
        }
      }`,
  };
}

const register = once(() => {
  for (const kind of [INDICES, COEFFICIENTS] as const)
    registerWebGPUKernel(kind, ({ inputs, backend, attrs }) => {
      const { scores } = inputs as { scores: tf.TensorInfo };
      const [rows, experts] = scores.shape as [number, number];
      const k = attrs.k as number;
      return backend.runWebGPUProgram(
        program(kind, rows, k, attrs.absolute as boolean),
        [scores],
        kind === INDICES ? 'int32' : 'float32',
        [
          { type: 'int32', data: [rows] },
          { type: 'int32', data: [experts] },
          { type: 'float32', data: [attrs.temperature as number] },
        ],
      );
    });
});

/**
 * The k largest scores of each row of `scores` `[T, E]` (of |score| with `absolute`), as a router
 * picks its experts: their indices (int32, largest first; the lower index first among equal scores,
 * as `tf.topk`) and the softmax of those values divided by `temperature`, both `[T, k]`. On webgpu with
 * fused kernels, k ≤ 16 and no gradient tape recording: two dispatches (tfjs's TopK sorts in about
 * log²E), no gradient; elsewhere `tf.topk` and `tf.softmax`. (A NaN score is never picked by the
 * fused kernel; tf.topk may pick it.)
 *
 * @example
 * ```ts
 * const { indices, coefficients } = topkSoftmax(tf.matMul(tokens, prototypes, false, true), 2, { absolute: true });
 * ```
 */
export function topkSoftmax(
  scores: tf.Tensor2D,
  k: number,
  options: { temperature?: number; absolute?: boolean } = {},
): { indices: tf.Tensor2D; coefficients: tf.Tensor2D } {
  const temperature = options.temperature ?? 1;
  const absolute = options.absolute ?? false;
  const [, experts] = scores.shape;
  if (scores.rank !== 2 || !Number.isInteger(k) || k < 1 || k > experts)
    throw new Error(
      `topkSoftmax: scores must be [T, E] and k an integer in [1, E]; got scores [${scores.shape.join(', ')}], k ${k}`,
    );
  if (!(temperature > 0)) throw new Error(`topkSoftmax: temperature must be positive, got ${temperature}`);
  const taping = ((tf.engine().state as unknown as { gradientDepth?: number }).gradientDepth ?? 0) > 0;
  if (fusedActive() && !taping && k <= MAX_FUSED_K && scores.dtype === 'float32' && scores.size > 0) {
    register();
    const attrs = { k, temperature, absolute };
    return {
      indices: runKernel(INDICES, { scores }, attrs) as tf.Tensor2D,
      coefficients: runKernel(COEFFICIENTS, { scores }, attrs) as tf.Tensor2D,
    };
  }
  return tf.tidy(() => {
    const { values, indices } = tf.topk(absolute ? tf.abs(scores) : scores, k, true);
    return { indices: indices as tf.Tensor2D, coefficients: tf.softmax(tf.div(values, temperature)) as tf.Tensor2D };
  });
}
