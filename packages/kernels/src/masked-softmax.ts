import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import {
  ROW_WG,
  flat,
  registerGradientOnce,
  registerWebGPUKernel,
  reshaped,
  rowProgram,
  runKernel,
  sizeOf,
  treeReduce,
  once,
} from './webgpu-program';

const FWD = 'LoraScaledMaskedSoftmax';
const BWD = 'LoraScaledMaskedSoftmaxGrad';

/**
 * Rows of `scores` [B, G, R, S] (B·G·R rows of S); the mask [Bm, 1, R, S] (Bm 1 or B) is shared by
 * the G groups: mask row = (b if Bm > 1) · R + r.
 */
function forwardProgram(rows: number, s: number) {
  return rowProgram(
    FWD,
    [rows, s],
    ['scores', 'mask'],
    rows,
    'scale : f32, rows : i32, s : i32, g : i32, r : i32, maskBatch : i32,',
    `
    fn maskRow(row : i32) -> i32 {
      let r = row % uniforms.r;
      let b = row / (uniforms.r * uniforms.g);
      return select(0, b, uniforms.maskBatch > 1) * uniforms.r + r;
    }
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      let base = row * uniforms.s;
      let mbase = maskRow(row) * uniforms.s;
      var m = -uniforms.INFINITY;
      for (var i = lid; i < uniforms.s; i = i + ${ROW_WG}) {
        m = max(m, scores[base + i] * uniforms.scale + mask[mbase + i]);
      }
      red[lid] = m;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `max(${a}, ${b})`)}
      let rowMax = red[0];
      workgroupBarrier();
      var total = 0.0;
      for (var i = lid; i < uniforms.s; i = i + ${ROW_WG}) {
        total = total + exp(scores[base + i] * uniforms.scale + mask[mbase + i] - rowMax);
      }
      red[lid] = total;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      let sum = red[0];
      if (rowRaw < uniforms.rows) {
        for (var i = lid; i < uniforms.s; i = i + ${ROW_WG}) {
          result[base + i] = exp(scores[base + i] * uniforms.scale + mask[mbase + i] - rowMax) / sum;
        }
      }
    }`,
  );
}

/** dscores = scale · p ⊙ (dp − Σ dp·p), row by row. */
function backwardProgram(rows: number, s: number) {
  return rowProgram(
    BWD,
    [rows, s],
    ['p', 'dp'],
    rows,
    'scale : f32, rows : i32, s : i32,',
    `
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      let base = row * uniforms.s;
      var acc = 0.0;
      for (var i = lid; i < uniforms.s; i = i + ${ROW_WG}) { acc = acc + dp[base + i] * p[base + i]; }
      red[lid] = acc;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      let dot = red[0];
      if (rowRaw < uniforms.rows) {
        for (var i = lid; i < uniforms.s; i = i + ${ROW_WG}) {
          result[base + i] = ((dp[base + i] - dot) * p[base + i]) * uniforms.scale;
        }
      }
    }`,
  );
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { scores, mask } = inputs as { scores: tf.TensorInfo; mask: tf.TensorInfo };
    const [, g, r, s] = scores.shape as [number, number, number, number];
    const rows = sizeOf(scores.shape) / s;
    const out = backend.runWebGPUProgram(forwardProgram(rows, s), [flat(scores), flat(mask)], 'float32', [
      { type: 'float32', data: [attrs.scale as number] },
      { type: 'int32', data: [rows] },
      { type: 'int32', data: [s] },
      { type: 'int32', data: [g] },
      { type: 'int32', data: [r] },
      { type: 'int32', data: [mask.shape[0] as number] },
    ]);
    return reshaped(out, scores.shape);
  });
  registerWebGPUKernel(BWD, ({ inputs, backend, attrs }) => {
    const { p, dp } = inputs as { p: tf.TensorInfo; dp: tf.TensorInfo };
    const s = p.shape.at(-1) as number;
    const rows = sizeOf(p.shape) / s;
    const out = backend.runWebGPUProgram(backwardProgram(rows, s), [flat(p), flat(dp)], 'float32', [
      { type: 'float32', data: [attrs.scale as number] },
      { type: 'int32', data: [rows] },
      { type: 'int32', data: [s] },
    ]);
    return reshaped(out, p.shape);
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['mask'],
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => {
      const [mask, p] = saved as [tf.Tensor, tf.Tensor];
      const scale = (attrs as { scale: number }).scale;
      return {
        scores: () => runKernel(BWD, { p, dp: dy as tf.Tensor }, { scale }),
        // an additive mask's gradient is the logits' without the scale, summed over what it is shared by
        mask: () =>
          tf.tidy(() => {
            const d = runKernel(BWD, { p, dp: dy as tf.Tensor }, { scale: 1 });
            return tf.reshape(tf.sum(d, mask.shape[0] === 1 ? [0, 1] : [1], true), mask.shape);
          }),
      };
    },
  });
});

/**
 * Attention probabilities `softmax(scores·scale + mask)` over the last axis, for scores
 * `[B, G, R, S]` and an additive mask `[1 or B, 1, R, S]` (0 where a query may attend, a large
 * negative number elsewhere) shared by the G groups. The mask gets no gradient. On webgpu with fused
 * kernels: one dispatch forward and one backward; elsewhere `tf.softmax(tf.add(tf.mul(scores, scale), mask))`.
 *
 * @example
 * ```ts
 * const probs = maskedSoftmax(tf.matMul(q, k, false, true), mask, 1 / Math.sqrt(headDim));
 * ```
 */
export function maskedSoftmax(scores: tf.Tensor, mask: tf.Tensor, scale: number): tf.Tensor {
  const [b, , r, s] = scores.shape as [number, number, number, number];
  const ok =
    scores.rank === 4 &&
    mask.rank === 4 &&
    (mask.shape[0] === 1 || mask.shape[0] === b) &&
    mask.shape[1] === 1 &&
    mask.shape[2] === r &&
    mask.shape[3] === s;
  if (!ok)
    throw new Error(
      `maskedSoftmax: scores must be [B, G, R, S] and the mask [1 or B, 1, R, S]; got scores [${scores.shape.join(', ')}] and mask [${mask.shape.join(', ')}]`,
    );
  if (fusedActive() && scores.dtype === 'float32' && mask.dtype === 'float32') {
    register();
    return runKernel(FWD, { scores, mask }, { scale });
  }
  return tf.tidy(() => tf.softmax(tf.add(tf.mul(scores, scale), mask), -1));
}
