import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import {
  elementwiseProgram,
  flat,
  registerGradientOnce,
  registerWebGPUKernel,
  reshaped,
  runKernel,
  sizeOf,
  once,
} from './webgpu-program';

const FWD = 'LoraRopeHeads';
const BWD = 'LoraRopeHeadsGrad';

/**
 * out[b,h,t,d] = y[b,t,h,d]·cos[t,d] + rot[b,t,h,d]·sin[t,d], rot = [−y₂, y₁] (halves of d);
 * the gradient maps dout [B,H,T,D] back to [B,T,H·D] through the transposed rotation.
 */
function program(kind: typeof FWD | typeof BWD, b: number, t: number, h: number, d: number) {
  const half = d / 2;
  const names = kind === FWD ? ['y', 'cosT', 'sinT'] : ['dout', 'cosT', 'sinT'];
  // index runs over the output: [B,H,T,D] forward, [B,T,H,D] backward
  const body =
    kind === FWD
      ? `
      let dd = index % uniforms.d;
      let rest = index / uniforms.d;
      let tt = rest % uniforms.t;
      let rest2 = rest / uniforms.t;
      let hh = rest2 % uniforms.h;
      let bb = rest2 / uniforms.h;
      let src = ((bb * uniforms.t + tt) * uniforms.h + hh) * uniforms.d;
      let c = cosT[tt * uniforms.d + dd];
      let s = sinT[tt * uniforms.d + dd];
      var other : f32;
      if (dd < ${half}) { other = -y[src + dd + ${half}]; } else { other = y[src + dd - ${half}]; }
      setOutputAtIndex(index, y[src + dd] * c + other * s);`
      : `
      let e = index % uniforms.d;
      let rest = index / uniforms.d;
      let hh = rest % uniforms.h;
      let rest2 = rest / uniforms.h;
      let tt = rest2 % uniforms.t;
      let bb = rest2 / uniforms.t;
      let src = ((bb * uniforms.h + hh) * uniforms.t + tt) * uniforms.d;
      var other : f32;
      if (e < ${half}) {
        other = dout[src + e + ${half}] * sinT[tt * uniforms.d + e + ${half}];
      } else {
        other = -(dout[src + e - ${half}] * sinT[tt * uniforms.d + e - ${half}]);
      }
      setOutputAtIndex(index, dout[src + e] * cosT[tt * uniforms.d + e] + other);`;
  const shape = kind === FWD ? [b, h, t, d] : [b, t, h, d];
  return elementwiseProgram(`${kind}_${half}`, [sizeOf(shape)], names, 1, 't : i32, h : i32, d : i32,', body);
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { y, cos, sin } = inputs as Record<string, tf.TensorInfo>;
    const [b, t] = (y as tf.TensorInfo).shape as [number, number, number];
    const h = attrs.heads as number;
    const d = ((y as tf.TensorInfo).shape[2] as number) / h;
    const out = backend.runWebGPUProgram(
      program(FWD, b, t, h, d),
      [flat(y as tf.TensorInfo), flat(cos as tf.TensorInfo), flat(sin as tf.TensorInfo)],
      'float32',
      dims(t, h, d),
    );
    return reshaped(out, [b, h, t, d]);
  });
  registerWebGPUKernel(BWD, ({ inputs, backend }) => {
    const { dy, cos, sin } = inputs as Record<string, tf.TensorInfo>;
    const [b, h, t, d] = (dy as tf.TensorInfo).shape as [number, number, number, number];
    const out = backend.runWebGPUProgram(
      program(BWD, b, t, h, d),
      [flat(dy as tf.TensorInfo), flat(cos as tf.TensorInfo), flat(sin as tf.TensorInfo)],
      'float32',
      dims(t, h, d),
    );
    return reshaped(out, [b, t, h * d]);
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['cos', 'sin'],
    gradFunc: (dy, saved) => {
      const [cos, sin] = saved as [tf.Tensor, tf.Tensor];
      return {
        y: () => runKernel(BWD, { dy: dy as tf.Tensor, cos, sin }),
        // the tables are constants of the positions
        cos: () => tf.zerosLike(cos),
        sin: () => tf.zerosLike(sin),
      };
    },
  });
});

function dims(t: number, h: number, d: number) {
  return [
    { type: 'int32' as const, data: [t] },
    { type: 'int32' as const, data: [h] },
    { type: 'int32' as const, data: [d] },
  ];
}

/** `x·cos + rotate_half(x)·sin` for x `[B, H, T, D]` and tables `[T, D]` (transformers' `apply_rotary_pos_emb`). */
export function applyRope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const d = x.shape[3] as number;
    const [x1, x2] = tf.split(x, [d / 2, d / 2], 3) as [tf.Tensor, tf.Tensor];
    const rotated = tf.concat([tf.neg(x2), x1], 3);
    return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
  });
}

/**
 * A projection's output `[B, T, heads·D]` split into heads `[B, heads, T, D]` and rotated by RoPE
 * (tables `[T, D]`, the halves repeated as transformers builds them): what Llama does to queries
 * and keys. With `cos`/`sin` null, only the split. On webgpu with fused kernels: one dispatch
 * forward and one backward, where the composite takes a transpose, a split, a concat and four
 * elementwise ops each way.
 *
 * @example
 * ```ts
 * const q = ropeHeads(qProj.call(x), cos, sin, numHeads); // [B, numHeads, T, headDim]
 * ```
 */
export function ropeHeads(y: tf.Tensor, cos: tf.Tensor | null, sin: tf.Tensor | null, heads: number): tf.Tensor {
  const [b, t, hd] = y.shape as [number, number, number];
  if (y.rank !== 3 || hd % heads !== 0)
    throw new Error(
      `ropeHeads: y must be [batch, seq, heads·headDim] with ${heads} heads, got [${y.shape.join(', ')}]`,
    );
  const d = hd / heads;
  const split = () => tf.transpose(tf.reshape(y, [b, t, heads, d]), [0, 2, 1, 3]);
  if (cos === null || sin === null) return split();
  if (cos.shape.join(',') !== `${t},${d}` || sin.shape.join(',') !== `${t},${d}`)
    throw new Error(
      `ropeHeads: cos [${cos.shape.join(', ')}] and sin [${sin.shape.join(', ')}] must be [${t}, ${d}] (positions × headDim)`,
    );
  if (fusedActive() && d % 2 === 0 && y.dtype === 'float32') {
    register();
    return runKernel(FWD, { y, cos, sin }, { heads });
  }
  return tf.tidy(() => applyRope(split(), cos, sin));
}
