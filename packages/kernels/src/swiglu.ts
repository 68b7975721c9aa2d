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

const FWD = 'LoraSwiGLU';
const GRAD_GATE = 'LoraSwiGLUGradGate';
const GRAD_UP = 'LoraSwiGLUGradUp';

// σ as tfjs computes it on webgpu and cpu: 1 / (1 + e^−x)
const SIGMOID = 'fn sigmoidOf(v : vec4<f32>) -> vec4<f32> { return 1.0 / (1.0 + exp(-v)); }';
const SIGMOID1 = 'fn sigmoidOf(v : f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }';

function program(kind: typeof FWD | typeof GRAD_GATE | typeof GRAD_UP, size: number) {
  const c = size % 4 === 0 ? 4 : 1;
  // every binding must be read: WebGPU's automatic layout drops unread ones and the bind group then fails
  const names = kind === FWD ? ['gate', 'up'] : kind === GRAD_UP ? ['gate', 'dy'] : ['gate', 'up', 'dy'];
  const body =
    kind === FWD
      ? 'let g = gate[index]; setOutputAtIndex(index, (g * sigmoidOf(g)) * up[index]);'
      : kind === GRAD_UP
        ? 'let g = gate[index]; setOutputAtIndex(index, dy[index] * (g * sigmoidOf(g)));'
        : // d/dg of g·σ(g) = σ(g) + g·σ(g)(1 − σ(g))
          'let g = gate[index]; let s = sigmoidOf(g); let dgs = dy[index] * up[index]; setOutputAtIndex(index, dgs * s + dgs * g * (s * (1.0 - s)));';
  const p = elementwiseProgram(kind, [size], names, c, '', body);
  const user = p.getUserCode;
  p.getUserCode = () => `${c === 4 ? SIGMOID : SIGMOID1}\n${user()}`;
  return p;
}

const register = once(() => {
  for (const kind of [FWD, GRAD_GATE, GRAD_UP] as const) {
    registerWebGPUKernel(kind, ({ inputs, backend }) => {
      const { gate, up, dy } = inputs as { gate: tf.TensorInfo; up: tf.TensorInfo; dy?: tf.TensorInfo };
      const n = sizeOf(gate.shape);
      const ins =
        kind === FWD
          ? [flat(gate), flat(up)]
          : kind === GRAD_UP
            ? [flat(gate), flat(dy as tf.TensorInfo)]
            : [flat(gate), flat(up), flat(dy as tf.TensorInfo)];
      return reshaped(backend.runWebGPUProgram(program(kind, n), ins, 'float32'), gate.shape);
    });
  }
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['gate', 'up'],
    gradFunc: (dy, saved) => {
      const [gate, up] = saved as [tf.Tensor, tf.Tensor];
      return {
        gate: () => runKernel(GRAD_GATE, { gate, up, dy: dy as tf.Tensor }),
        up: () => runKernel(GRAD_UP, { gate, up, dy: dy as tf.Tensor }),
      };
    },
  });
});

/**
 * Llama's gated activation `silu(gate) · up` = `gate · σ(gate) · up` (the inside of
 * `down_proj(act_fn(gate_proj(x)) * up_proj(x))`). On webgpu with fused kernels: one dispatch
 * forward and one per input gradient; elsewhere the composite of tf ops.
 *
 * @example
 * ```ts
 * const h = swiglu(gateProj.call(x), upProj.call(x));
 * ```
 */
export function swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  if (gate.shape.join(',') !== up.shape.join(','))
    throw new Error(`swiglu: gate [${gate.shape.join(', ')}] and up [${up.shape.join(', ')}] must have the same shape`);
  if (fusedActive() && gate.dtype === 'float32' && up.dtype === 'float32') {
    register();
    return runKernel(FWD, { gate, up });
  }
  return tf.tidy(() => tf.mul(tf.mul(gate, tf.sigmoid(gate)), up));
}
