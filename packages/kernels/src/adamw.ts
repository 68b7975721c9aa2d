import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './options';
import { elementwiseProgram, flat, registerWebGPUKernel, reshaped, runKernel, sizeOf } from './webgpu-program';

const MOMENTS = 'LoraAdamWMoments';
const PARAM = 'LoraAdamWParam';

/** The scalars of one AdamW step of one parameter (torch.optim.AdamW's single-tensor path). */
export interface AdamWHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The parameter's step count, this step included (for the bias corrections). */
  step: number;
}

/** m then v, n each: mv' = [m + (g − m)(1 − β1); v·β2 + g·g·(1 − β2)]. */
function momentsProgram(n: number) {
  return elementwiseProgram(
    MOMENTS,
    [2 * n],
    ['g', 'mv'],
    1,
    'n : i32, oneMinusB1 : f32, b2 : f32, oneMinusB2 : f32,',
    `
      if (index < uniforms.n) {
        let m = mv[index];
        setOutputAtIndex(index, m + (g[index] - m) * uniforms.oneMinusB1);
      } else {
        let gi = g[index - uniforms.n];
        setOutputAtIndex(index, mv[index] * uniforms.b2 + (gi * gi) * uniforms.oneMinusB2);
      }`,
  );
}

/** p' = p·(1 − lr·wd) − stepSize · m' / (√v' / √bc2 + eps), from the new moments. */
function paramProgram(n: number) {
  return elementwiseProgram(
    PARAM,
    [n],
    ['p', 'mv'],
    1,
    'n : i32, decay : f32, stepSize : f32, bc2Sqrt : f32, eps : f32,',
    `
      let denom = sqrt(mv[index + uniforms.n]) / uniforms.bc2Sqrt + uniforms.eps;
      setOutputAtIndex(index, p[index] * uniforms.decay - (mv[index] / denom) * uniforms.stepSize);`,
  );
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  registerWebGPUKernel(MOMENTS, ({ inputs, backend, attrs }) => {
    const { g, mv } = inputs as { g: tf.TensorInfo; mv: tf.TensorInfo };
    const n = sizeOf(g.shape);
    const h = attrs as unknown as AdamWHyper;
    const out = backend.runWebGPUProgram(momentsProgram(n), [flat(g), flat(mv)], 'float32', [
      { type: 'int32', data: [n] },
      { type: 'float32', data: [1 - h.beta1] },
      { type: 'float32', data: [h.beta2] },
      { type: 'float32', data: [1 - h.beta2] },
    ]);
    return reshaped(out, mv.shape);
  });
  registerWebGPUKernel(PARAM, ({ inputs, backend, attrs }) => {
    const { p, mv } = inputs as { p: tf.TensorInfo; mv: tf.TensorInfo };
    const n = sizeOf(p.shape);
    const h = attrs as unknown as AdamWHyper;
    const out = backend.runWebGPUProgram(paramProgram(n), [flat(p), flat(mv)], 'float32', [
      { type: 'int32', data: [n] },
      { type: 'float32', data: [1 - h.lr * h.weightDecay] },
      { type: 'float32', data: [h.lr / (1 - h.beta1 ** h.step)] },
      { type: 'float32', data: [Math.sqrt(1 - h.beta2 ** h.step)] },
      { type: 'float32', data: [h.eps] },
    ]);
    return reshaped(out, p.shape);
  });
}

/**
 * One AdamW update of one parameter, as `torch.optim.AdamW` (decoupled decay
 * `p·(1 − lr·wd)`, then `p − lr/bc1 · m / (√v/√bc2 + eps)`), with the moments packed in one tensor
 * `[2, ...p.shape]` (m then v; zeros before the first step). Returns the new parameter value and the
 * new moments; the caller assigns and disposes. On webgpu with fused kernels: two dispatches
 * (moments, parameter) where the composite takes about ten; elsewhere the composite.
 *
 * @example
 * ```ts
 * const { param, moments } = adamwUpdate(p, g, mv, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 });
 * p.assign(param); mv.assign(moments); tf.dispose([param, moments]);
 * ```
 */
export function adamwUpdate(
  param: tf.Tensor,
  grad: tf.Tensor,
  moments: tf.Tensor,
  hyper: AdamWHyper,
): { param: tf.Tensor; moments: tf.Tensor } {
  if (grad.shape.join(',') !== param.shape.join(',') || moments.shape.join(',') !== [2, ...param.shape].join(','))
    throw new Error(
      `adamwUpdate: grad [${grad.shape.join(', ')}] must match the parameter [${param.shape.join(', ')}] and the moments [${moments.shape.join(', ')}] must be [2, ${param.shape.join(', ')}]`,
    );
  if (fusedActive() && param.dtype === 'float32') {
    register();
    const attrs = hyper as unknown as Record<string, unknown>;
    const mv = runKernel(MOMENTS, { g: grad, mv: moments }, attrs);
    return { param: runKernel(PARAM, { p: param, mv }, attrs), moments: mv };
  }
  return tf.tidy(() => {
    const { lr, beta1: b1, beta2: b2, eps, weightDecay, step } = hyper;
    const [m0, v0] = tf.unstack(moments) as [tf.Tensor, tf.Tensor];
    const decayed = weightDecay !== 0 ? tf.mul(param, 1 - lr * weightDecay) : param;
    // torch: exp_avg.lerp_(grad, 1 − β1), i.e. m + (1 − β1)(g − m)
    const m = tf.add(m0, tf.mul(tf.sub(grad, m0), 1 - b1));
    const v = tf.add(tf.mul(v0, b2), tf.mul(tf.mul(grad, grad), 1 - b2));
    const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(1 - b2 ** step)), eps);
    const next = tf.sub(decayed, tf.mul(tf.div(m, denom), lr / (1 - b1 ** step)));
    return { param: next, moments: tf.stack([m, v]) };
  });
}
