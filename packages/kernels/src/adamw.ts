import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import {
  type WebGPUBackendLike,
  elementwiseProgram,
  flat,
  registerWebGPUKernel,
  reshaped,
  runKernel,
  sizeOf,
  once,
} from './webgpu-program';

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

/**
 * m then v, n each: mv' = [m + (g − m)(1 − β1); v·β2 + g·g·(1 − β2)]. In place, the old moments are
 * read from the output buffer itself (`result`, read-write) instead of an input.
 */
function momentsProgram(n: number, inPlace: boolean) {
  const old = inPlace ? 'result' : 'mv';
  return elementwiseProgram(
    `${MOMENTS}${inPlace ? 'InPlace' : ''}`,
    [2 * n],
    inPlace ? ['g'] : ['g', 'mv'],
    1,
    'n : i32, oneMinusB1 : f32, b2 : f32, oneMinusB2 : f32,',
    `
      if (index < uniforms.n) {
        let m = ${old}[index];
        setOutputAtIndex(index, m + (g[index] - m) * uniforms.oneMinusB1);
      } else {
        let gi = g[index - uniforms.n];
        setOutputAtIndex(index, ${old}[index] * uniforms.b2 + (gi * gi) * uniforms.oneMinusB2);
      }`,
  );
}

/**
 * p' = p·(1 − lr·wd) − stepSize · m' / (√v' / √bc2 + eps), from the new moments. The scalars that
 * change with the step come from a tensor [decay, stepSize, bc2Sqrt, eps], not uniforms, so that
 * the dispatch's uniform block (and bind group) stays the same from step to step.
 */
function paramProgram(n: number, inPlace: boolean) {
  return elementwiseProgram(
    `${PARAM}${inPlace ? 'InPlace' : ''}`,
    [n],
    inPlace ? ['mv', 'scalars'] : ['p', 'mv', 'scalars'],
    1,
    'n : i32,',
    `
      let denom = sqrt(mv[index + uniforms.n]) / scalars[2] + scalars[3];
      setOutputAtIndex(index, ${inPlace ? 'result' : 'p'}[index] * scalars[0] - (mv[index] / denom) * scalars[1]);`,
  );
}

function momentUniforms(n: number, h: AdamWHyper) {
  return [
    { type: 'int32' as const, data: [n] },
    { type: 'float32' as const, data: [1 - h.beta1] },
    { type: 'float32' as const, data: [h.beta2] },
    { type: 'float32' as const, data: [1 - h.beta2] },
  ];
}

/**
 * The per-step scalars of {@link adamwUpdate}'s fused kernel, `[1 − lr·wd, lr/bc1, √bc2, eps]`: make
 * them once per optimizer step and pass them to every parameter's update (the caller disposes).
 */
export function adamwScalars(hyper: AdamWHyper): tf.Tensor1D {
  const { lr, beta1, beta2, eps, weightDecay, step } = hyper;
  return tf.tensor1d([1 - lr * weightDecay, lr / (1 - beta1 ** step), Math.sqrt(1 - beta2 ** step), eps]);
}

const register = once(() => {
  registerWebGPUKernel(MOMENTS, ({ inputs, backend, attrs }) => {
    const { g, mv } = inputs as { g: tf.TensorInfo; mv: tf.TensorInfo };
    const n = sizeOf(g.shape);
    const h = attrs as unknown as AdamWHyper;
    const out = backend.runWebGPUProgram(
      momentsProgram(n, false),
      [flat(g), flat(mv)],
      'float32',
      momentUniforms(n, h),
    );
    return reshaped(out, mv.shape);
  });
  registerWebGPUKernel(PARAM, ({ inputs, backend }) => {
    const { p, mv, scalars } = inputs as { p: tf.TensorInfo; mv: tf.TensorInfo; scalars: tf.TensorInfo };
    const n = sizeOf(p.shape);
    const out = backend.runWebGPUProgram(paramProgram(n, false), [flat(p), flat(mv), scalars], 'float32', [
      { type: 'int32', data: [n] },
    ]);
    return reshaped(out, p.shape);
  });
});

/**
 * One AdamW update of one parameter, as `torch.optim.AdamW` (decoupled decay
 * `p·(1 − lr·wd)`, then `p − lr/bc1 · m / (√v/√bc2 + eps)`), with the moments packed in one tensor
 * `[2, ...p.shape]` (m then v; zeros before the first step). Returns the new parameter value and the
 * new moments; the caller assigns and disposes. On webgpu with fused kernels: two dispatches
 * (moments, parameter) where the composite takes about ten; elsewhere the composite. `scalars`
 * ({@link adamwScalars} of the same hyperparameters), shared by the parameters of a step, saves
 * making them per parameter.
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
  scalars?: tf.Tensor,
): { param: tf.Tensor; moments: tf.Tensor } {
  if (grad.shape.join(',') !== param.shape.join(',') || moments.shape.join(',') !== [2, ...param.shape].join(','))
    throw new Error(
      `adamwUpdate: grad [${grad.shape.join(', ')}] must match the parameter [${param.shape.join(', ')}] and the moments [${moments.shape.join(', ')}] must be [2, ${param.shape.join(', ')}]`,
    );
  if (fusedActive() && param.dtype === 'float32') {
    register();
    const attrs = hyper as unknown as Record<string, unknown>;
    const mv = runKernel(MOMENTS, { g: grad, mv: moments }, attrs);
    const s = scalars ?? adamwScalars(hyper);
    const next = runKernel(PARAM, { p: param, mv, scalars: s });
    if (!scalars) s.dispose();
    return { param: next, moments: mv };
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

interface InPlaceBackend extends WebGPUBackendLike {
  refCount(dataId: tf.DataId): number;
  tensorMap: { get(dataId: tf.DataId): { values: unknown; resource: unknown } | undefined };
}

/** Whether a tensor's GPU buffer is its own (no other tensor shares the data) and may be overwritten. */
function ownBuffer(backend: InPlaceBackend, t: tf.Tensor): boolean {
  const data = backend.tensorMap.get(t.dataId);
  return (
    t.dtype === 'float32' &&
    backend.refCount(t.dataId) === 1 &&
    data !== undefined &&
    typeof GPUBuffer !== 'undefined' &&
    data.resource instanceof GPUBuffer
  );
}

let inPlaceWrites = 0;

/**
 * How many times {@link adamwUpdateInPlace} has written a variable's buffer in place, since the
 * module loaded. An in-place write keeps the variable's `dataId`, so a cache made from a variable's
 * values (a stack of factors) cannot tell it changed from the `dataId`: it compares this count too.
 *
 * @example
 * ```ts
 * const stale = cachedFrom.some((id, i) => id !== vars[i].dataId) || cachedAt !== inPlaceWriteCount();
 * ```
 */
export function inPlaceWriteCount(): number {
  return inPlaceWrites;
}

/**
 * {@link adamwUpdate} writing the new values into `param`'s and `moments`' own GPU buffers (webgpu,
 * fused kernels on): no new tensors, and the same buffers step after step, so the dispatches'
 * bind groups can be reused. Returns false, changing nothing, where that is not possible (another
 * backend, a buffer shared with another tensor, data not on the GPU); the caller then uses
 * {@link adamwUpdate}. These dispatches bypass the engine: `tf.profile` does not list them.
 *
 * @example
 * ```ts
 * if (!adamwUpdateInPlace(p, g, mv, hyper, scalars)) { const r = adamwUpdate(p, g, mv, hyper, scalars); p.assign(r.param); mv.assign(r.moments); tf.dispose([r.param, r.moments]); }
 * ```
 */
export function adamwUpdateInPlace(
  param: tf.Variable,
  grad: tf.Tensor,
  moments: tf.Variable,
  hyper: AdamWHyper,
  scalars: tf.Tensor,
): boolean {
  if (!fusedActive() || grad.dtype !== 'float32' || moments.size !== 2 * param.size || grad.size !== param.size)
    return false;
  const backend = tf.backend() as unknown as InPlaceBackend;
  if (!ownBuffer(backend, param) || !ownBuffer(backend, moments)) return false;
  const n = param.size;
  const info = (t: tf.Tensor, shape: number[]): tf.TensorInfo => ({ dataId: t.dataId, shape, dtype: 'float32' });
  backend.runWebGPUProgram(
    momentsProgram(n, true),
    [info(grad, [n])],
    'float32',
    momentUniforms(n, hyper),
    info(moments, [2 * n]),
  );
  backend.runWebGPUProgram(
    paramProgram(n, true),
    [info(moments, [2 * n]), info(scalars, [scalars.size])],
    'float32',
    [{ type: 'int32', data: [n] }],
    info(param, [n]),
  );
  inPlaceWrites++;
  // values read back earlier are stale now
  for (const t of [param, moments]) {
    const data = backend.tensorMap.get(t.dataId);
    if (data) data.values = null;
  }
  return true;
}
