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

const FWD = 'LoraRMSNorm';
const BWD = 'LoraRMSNormGradInput';

function rmsForwardProgram(rows: number, d: number) {
  return rowProgram(
    FWD,
    [rows, d],
    ['x', 'w'],
    rows,
    'eps : f32, rows : i32, d : i32,',
    `
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      let base = row * uniforms.d;
      var ss = 0.0;
      for (var i = lid; i < uniforms.d; i = i + ${ROW_WG}) { let v = x[base + i]; ss = ss + v * v; }
      red[lid] = ss;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      let r = inverseSqrt(red[0] / f32(uniforms.d) + uniforms.eps);
      if (rowRaw < uniforms.rows) {
        for (var i = lid; i < uniforms.d; i = i + ${ROW_WG}) { result[base + i] = (x[base + i] * r) * w[i]; }
      }
    }`,
  );
}

function rmsBackwardProgram(rows: number, d: number) {
  // dx = r·g − (r³/D)·x·Σ g·x, with g = dy·w and r = 1/√(mean(x²) + eps)
  return rowProgram(
    BWD,
    [rows, d],
    ['x', 'w', 'dy'],
    rows,
    'eps : f32, rows : i32, d : i32,',
    `
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      let base = row * uniforms.d;
      var acc = vec2<f32>(0.0, 0.0);
      for (var i = lid; i < uniforms.d; i = i + ${ROW_WG}) {
        let v = x[base + i];
        acc = acc + vec2<f32>(v * v, dy[base + i] * w[i] * v);
      }
      red[lid] = acc;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      let sums = red[0];
      let r = inverseSqrt(sums.x / f32(uniforms.d) + uniforms.eps);
      let c = r * r * r * sums.y / f32(uniforms.d);
      if (rowRaw < uniforms.rows) {
        for (var i = lid; i < uniforms.d; i = i + ${ROW_WG}) {
          result[base + i] = r * (dy[base + i] * w[i]) - c * x[base + i];
        }
      }
    }`,
    'vec2<f32>',
  );
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { x, weight } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo };
    const d = x.shape.at(-1) as number;
    const rows = sizeOf(x.shape) / d;
    const out = backend.runWebGPUProgram(
      rmsForwardProgram(rows, d),
      [flat(x, [rows, d]), weight],
      'float32',
      uniformsFor(attrs.eps as number, rows, d),
    );
    return reshaped(out, x.shape);
  });
  registerWebGPUKernel(BWD, ({ inputs, backend, attrs }) => {
    const { x, weight, dy } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo; dy: tf.TensorInfo };
    const d = x.shape.at(-1) as number;
    const rows = sizeOf(x.shape) / d;
    const out = backend.runWebGPUProgram(
      rmsBackwardProgram(rows, d),
      [flat(x, [rows, d]), weight, flat(dy, [rows, d])],
      'float32',
      uniformsFor(attrs.eps as number, rows, d),
    );
    return reshaped(out, x.shape);
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['x', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const [x, weight] = saved as [tf.Tensor, tf.Tensor];
      const eps = (attrs as { eps: number }).eps;
      return {
        x: () => runKernel(BWD, { x, weight, dy: dy as tf.Tensor }, { eps }),
        // only when the norm's weight trains (never under LoRA): Σ over rows of dy·x·r
        weight: () =>
          tf.tidy(() => {
            const r = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps));
            const axes = Array.from({ length: x.rank - 1 }, (_, i) => i);
            return tf.sum(tf.mul(dy as tf.Tensor, tf.mul(x, r)), axes);
          }),
      };
    },
  });
});

function uniformsFor(eps: number, rows: number, d: number) {
  return [
    { type: 'float32' as const, data: [eps] },
    { type: 'int32' as const, data: [rows] },
    { type: 'int32' as const, data: [d] },
  ];
}

/**
 * Root-mean-square normalisation over the last axis, `x / √(mean(x²) + eps) · weight` (Hugging
 * Face's `LlamaRMSNorm`). On webgpu with fused kernels: one dispatch forward, one for the input's
 * gradient (the weight's gradient only when the weight is trained); elsewhere the composite of tf ops.
 *
 * @example
 * ```ts
 * const y = rmsNorm(x, weight, 1e-5); // x [..., D], weight [D]
 * ```
 */
export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  if (x.shape.at(-1) !== weight.size || weight.rank !== 1)
    throw new Error(
      `rmsNorm: weight [${weight.shape.join(', ')}] must be 1-d and match the last axis of x [${x.shape.join(', ')}]`,
    );
  if (fusedActive() && x.dtype === 'float32') {
    register();
    return runKernel(FWD, { x, weight }, { eps });
  }
  return tf.tidy(() => tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps))), weight));
}
