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

const FWD = 'LoraAddScaled';
const SCALE = 'LoraScale';

function program(kind: typeof FWD | typeof SCALE, size: number) {
  const c = size % 4 === 0 ? 4 : 1;
  return kind === FWD
    ? elementwiseProgram(
        FWD,
        [size],
        ['a', 'b'],
        c,
        'scale : f32,',
        'setOutputAtIndex(index, a[index] + b[index] * uniforms.scale);',
      )
    : elementwiseProgram(
        SCALE,
        [size],
        ['x'],
        c,
        'scale : f32,',
        'setOutputAtIndex(index, x[index] * uniforms.scale);',
      );
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { a, b } = inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const out = backend.runWebGPUProgram(program(FWD, sizeOf(a.shape)), [flat(a), flat(b)], 'float32', [
      { type: 'float32', data: [attrs.scale as number] },
    ]);
    return reshaped(out, a.shape);
  });
  registerWebGPUKernel(SCALE, ({ inputs, backend, attrs }) => {
    const { x } = inputs as { x: tf.TensorInfo };
    const out = backend.runWebGPUProgram(program(SCALE, sizeOf(x.shape)), [flat(x)], 'float32', [
      { type: 'float32', data: [attrs.scale as number] },
    ]);
    return reshaped(out, x.shape);
  });
  registerGradientOnce({
    kernelName: FWD,
    gradFunc: (dy, _saved, attrs) => ({
      a: () => tf.clone(dy as tf.Tensor),
      b: () => runKernel(SCALE, { x: dy as tf.Tensor }, { scale: (attrs as { scale: number }).scale }),
    }),
  });
});

/** `x·scale` in one webgpu dispatch, the scale a uniform (for fused kernels' gradients; webgpu only). */
export function scaledOnWebgpu(x: tf.Tensor, scale: number): tf.Tensor {
  register();
  return runKernel(SCALE, { x }, { scale });
}

/**
 * `a + b·scale` for tensors of one shape (how a LoRA layer adds `s·B(A(x))` to the base output). On
 * webgpu with fused kernels: one dispatch, the scale a uniform (no scalar tensor uploaded per call),
 * and one for `b`'s gradient; elsewhere `tf.add(a, tf.mul(b, scale))`.
 *
 * @example
 * ```ts
 * const y = addScaled(base, lora, alpha / r);
 * ```
 */
export function addScaled(a: tf.Tensor, b: tf.Tensor, scale: number): tf.Tensor {
  if (a.shape.join(',') !== b.shape.join(','))
    throw new Error(`addScaled: a [${a.shape.join(', ')}] and b [${b.shape.join(', ')}] must have the same shape`);
  if (fusedActive() && a.dtype === 'float32' && b.dtype === 'float32') {
    register();
    return runKernel(FWD, { a, b }, { scale });
  }
  return tf.tidy(() => tf.add(a, tf.mul(b, scale)));
}
