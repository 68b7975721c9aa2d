import * as tf from '@tensorflow/tfjs-core';
import { adamwScalars, adamwUpdate, adamwUpdateInPlace, fusedActive } from '@lora/kernels';
import type { Parameter } from './module';

/**
 * AdamW's moments of one parameter: m and v apart (the composite), or packed [2, ...shape] for
 * @lora/kernels' fused update on webgpu; converted when the path changes between steps.
 */
interface AdamWState {
  m: tf.Variable | null;
  v: tf.Variable | null;
  mv: tf.Variable | null;
  t: number;
}

/** An optimizer over an explicit list of parameters, stepping with gradients given by name or position. */
export interface Optimizer {
  /** Learning rate of the next step (schedulers set it). */
  lr: number;
  /** Applies one update. `grads` maps each parameter's variable name to its gradient. */
  step(grads: Record<string, tf.Tensor>): void;
  /** Frees the optimizer's state tensors. */
  dispose(): void;
  /** The step count so far. */
  readonly steps: number;
}

/** Options of {@link AdamW}, with PyTorch's defaults. */
export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/**
 * AdamW exactly as `torch.optim.AdamW` (the default, non-amsgrad, single-tensor path): decoupled
 * weight decay `p ← p·(1 − lr·wd)`, then `p ← p − lr/bc1 · m / (√v/√bc2 + eps)` with bias
 * corrections `bc = 1 − βᵗ`. Parameters without a gradient in a step are left alone, as torch does.
 *
 * @example
 * ```ts
 * const opt = new AdamW(model.trainableParameters(), { lr: 2e-4, weightDecay: 0 });
 * const { grads } = tf.variableGrads(() => loss(), model.trainableParameters());
 * opt.step(grads); tf.dispose(grads);
 * ```
 */
export class AdamW implements Optimizer {
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  private readonly params: Parameter[];
  private readonly state = new Map<Parameter, AdamWState>();
  private count = 0;

  constructor(params: Parameter[], options: AdamWOptions = {}) {
    this.params = params;
    this.lr = options.lr ?? 1e-3;
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 1e-2;
    if (!(this.lr >= 0)) throw new Error(`Invalid learning rate: ${this.lr}`);
    if (!(this.eps >= 0)) throw new Error(`Invalid epsilon value: ${this.eps}`);
    if (!(this.betas[0] >= 0 && this.betas[0] < 1))
      throw new Error(`Invalid beta parameter at index 0: ${this.betas[0]}`);
    if (!(this.betas[1] >= 0 && this.betas[1] < 1))
      throw new Error(`Invalid beta parameter at index 1: ${this.betas[1]}`);
    if (!(this.weightDecay >= 0)) throw new Error(`Invalid weight_decay value: ${this.weightDecay}`);
  }

  get steps(): number {
    return this.count;
  }

  step(grads: Record<string, tf.Tensor>): void {
    this.count++;
    const [b1, b2] = this.betas;
    // the fused kernel's per-step scalars, shared by the parameters at the same step count
    const scalars = new Map<number, tf.Tensor>();
    try {
      for (const p of this.params) this.stepOne(p, grads[p.name], b1, b2, scalars);
    } finally {
      tf.dispose([...scalars.values()]);
    }
  }

  private stepOne(
    p: Parameter,
    g: tf.Tensor | undefined,
    b1: number,
    b2: number,
    scalars: Map<number, tf.Tensor>,
  ): void {
    if (!g) return;
    let st = this.state.get(p);
    if (!st) {
      st = { m: null, v: null, mv: null, t: 0 };
      this.state.set(p, st);
    }
    st.t++;
    if (fusedActive()) {
      this.stepFused(p, g, st, scalars);
      return;
    }
    const { m: m0, v: v0 } = separate(p, st);
    const bc1 = 1 - b1 ** st.t;
    const bc2 = 1 - b2 ** st.t;
    const stepSize = this.lr / bc1;
    const bc2Sqrt = Math.sqrt(bc2);
    tf.tidy(() => {
      const decayed = this.weightDecay !== 0 ? tf.mul(p, 1 - this.lr * this.weightDecay) : p;
      // torch: exp_avg.lerp_(grad, 1 − β1), i.e. m + (1 − β1)(g − m)
      const m = tf.add(m0, tf.mul(tf.sub(g, m0), 1 - b1));
      const v = tf.add(tf.mul(v0, b2), tf.mul(tf.mul(g, g), 1 - b2));
      const denom = tf.add(tf.div(tf.sqrt(v), bc2Sqrt), this.eps);
      m0.assign(m);
      v0.assign(v);
      p.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), stepSize)));
    });
  }

  /** The same update in two dispatches on webgpu (@lora/kernels), the moments packed. */
  private stepFused(p: Parameter, g: tf.Tensor, st: AdamWState, scalars: Map<number, tf.Tensor>): void {
    const mv = packed(p, st);
    const hyper = {
      lr: this.lr,
      beta1: this.betas[0],
      beta2: this.betas[1],
      eps: this.eps,
      weightDecay: this.weightDecay,
      step: st.t,
    };
    let s = scalars.get(st.t);
    if (!s) {
      s = adamwScalars(hyper);
      scalars.set(st.t, s);
    }
    // in place where the buffers are the parameter's own: no new tensors, the same buffers every step
    if (adamwUpdateInPlace(p, g, mv, hyper, s)) return;
    const next = adamwUpdate(p, g, mv, hyper, s);
    mv.assign(next.moments);
    p.assign(next.param);
    tf.dispose([next.moments, next.param]);
  }

  dispose(): void {
    for (const s of this.state.values()) tf.dispose([s.m, s.v, s.mv].filter((t): t is tf.Variable => t !== null));
    this.state.clear();
  }
}

/** The moments apart, made (zeros) or unpacked as needed. */
function separate(p: Parameter, st: AdamWState): { m: tf.Variable; v: tf.Variable } {
  if (!st.m || !st.v) {
    // tidy frees the zeros (or the unpacked halves) once the variables hold their data
    const made = tf.tidy(() => {
      const [m, v] = st.mv ? (tf.unstack(st.mv) as [tf.Tensor, tf.Tensor]) : [tf.zerosLike(p), tf.zerosLike(p)];
      return { m: tf.variable(m, false), v: tf.variable(v, false) };
    });
    st.mv?.dispose();
    st.mv = null;
    st.m = made.m;
    st.v = made.v;
  }
  return { m: st.m, v: st.v };
}

/** The moments packed [2, ...shape], made (zeros) or packed as needed. */
function packed(p: Parameter, st: AdamWState): tf.Variable {
  if (!st.mv) {
    const { m, v } = st;
    st.mv = tf.tidy(() => tf.variable(m && v ? tf.stack([m, v]) : tf.zeros([2, ...p.shape]), false));
    tf.dispose([m, v].filter((t): t is tf.Variable => t !== null));
    st.m = null;
    st.v = null;
  }
  return st.mv;
}

/** Options of {@link SGD}, with PyTorch's defaults. */
export interface SGDOptions {
  lr?: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/**
 * Stochastic gradient descent as `torch.optim.SGD`: L2 weight decay added to the gradient, momentum
 * buffer initialised to the first gradient, dampening, optional Nesterov.
 *
 * @example
 * ```ts
 * const opt = new SGD(params, { lr: 0.1, momentum: 0.9 });
 * ```
 */
export class SGD implements Optimizer {
  lr: number;
  readonly momentum: number;
  readonly dampening: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;
  private readonly params: Parameter[];
  private readonly buffers = new Map<Parameter, tf.Variable>();
  private count = 0;

  constructor(params: Parameter[], options: SGDOptions = {}) {
    this.params = params;
    this.lr = options.lr ?? 1e-3;
    this.momentum = options.momentum ?? 0;
    this.dampening = options.dampening ?? 0;
    this.weightDecay = options.weightDecay ?? 0;
    this.nesterov = options.nesterov ?? false;
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0))
      throw new Error('Nesterov momentum requires a momentum and zero dampening');
  }

  get steps(): number {
    return this.count;
  }

  step(grads: Record<string, tf.Tensor>): void {
    this.count++;
    for (const p of this.params) {
      const g0 = grads[p.name];
      if (!g0) continue;
      tf.tidy(() => {
        let g = this.weightDecay !== 0 ? tf.add(g0, tf.mul(p, this.weightDecay)) : g0;
        if (this.momentum !== 0) {
          const buf = this.buffers.get(p);
          let next: tf.Tensor;
          if (!buf) {
            next = tf.clone(g);
            this.buffers.set(p, tf.variable(next, false));
          } else {
            next = tf.add(tf.mul(buf, this.momentum), tf.mul(g, 1 - this.dampening));
            buf.assign(next);
          }
          g = this.nesterov ? tf.add(g, tf.mul(next, this.momentum)) : next;
        }
        p.assign(tf.sub(p, tf.mul(g, this.lr)));
      });
    }
  }

  dispose(): void {
    tf.dispose([...this.buffers.values()]);
    this.buffers.clear();
  }
}

/**
 * The sum of `terms` by `addN` over at most 7 at a time: WebGPU devices get the spec's default of 8
 * storage buffers per shader stage (tfjs asks for no more), and tfjs' webgpu `AddN` binds every input
 * in one shader, so an `addN` of 8 or more tensors fails there (LoRA on a real model has dozens).
 */
function sumInChunks(terms: tf.Tensor[]): tf.Tensor {
  let level = terms;
  while (level.length > 1) {
    const next: tf.Tensor[] = [];
    for (let i = 0; i < level.length; i += 7) {
      const chunk = level.slice(i, i + 7);
      next.push(chunk.length === 1 ? (chunk[0] as tf.Tensor) : tf.addN(chunk));
    }
    level = next;
  }
  return level[0] as tf.Tensor;
}

/**
 * Scales gradients so that their global L2 norm is at most `maxNorm`, as
 * `torch.nn.utils.clip_grad_norm_` (coefficient `maxNorm / (norm + 1e-6)`, applied only when below 1).
 * Returns the new gradients (the old ones are disposed when replaced) and the total norm before clipping.
 *
 * @example
 * ```ts
 * const { grads: clipped, totalNorm } = await clipGradNorm(grads, 1.0);
 * ```
 */
export async function clipGradNorm(
  grads: Record<string, tf.Tensor>,
  maxNorm: number,
): Promise<{ grads: Record<string, tf.Tensor>; totalNorm: number }> {
  const names = Object.keys(grads);
  if (names.length === 0) return { grads, totalNorm: 0 };
  const total = tf.tidy(() => tf.sqrt(sumInChunks(names.map((n) => tf.sum(tf.square(grads[n] as tf.Tensor))))));
  const totalNorm = (await total.data())[0] as number;
  total.dispose();
  const coef = maxNorm / (totalNorm + 1e-6);
  if (coef >= 1) return { grads, totalNorm };
  const out: Record<string, tf.Tensor> = {};
  for (const n of names) {
    out[n] = tf.mul(grads[n] as tf.Tensor, coef);
    (grads[n] as tf.Tensor).dispose();
  }
  return { grads: out, totalNorm };
}
