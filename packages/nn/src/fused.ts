import * as tf from '@tensorflow/tfjs-core';
import * as kernels from '@lora/kernels';
import { needsGrad } from './ops';

/**
 * Whether the hot ops run `@lora/kernels`' implementations: on webgpu they do (fused WGSL kernels,
 * or their composites under `configureKernels({ fused: false })`), which is what the GPU benchmark
 * measures; on every other backend (wasm, cpu, tensorflow) the lean custom-gradient ops of this
 * package run instead. The one place `@lora/nn` and `@lora/models` pick per backend.
 *
 * @example
 * ```ts
 * const y = gpuKernelsActive() ? kernels.rmsNorm(x, w, eps) : rmsNorm(x, w, eps);
 * ```
 */
export function gpuKernelsActive(): boolean {
  return tf.getBackend() === 'webgpu';
}

type CustomOp = (...t: tf.Tensor[]) => tf.Tensor;
const custom = (
  f: (...args: never[]) => {
    value: tf.Tensor;
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
  },
) => tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as CustomOp;

/**
 * Root-mean-square normalisation over the last axis, `x / √(mean(x²) + eps) · weight`, as
 * transformers' `LlamaRMSNorm`, as one op with its own gradient: the backward pass keeps only `x`
 * and the per-row scale (tfjs's op-by-op gradient keeps four activations of `x`'s size), and a
 * frozen `weight` gets no gradient.
 *
 * @example
 * ```ts
 * const y = rmsNorm(x, norm.weight, 1e-5); // x: [batch, seq, dim], weight: [dim]
 * ```
 */
export function rmsNorm(x: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  if (gpuKernelsActive()) return kernels.rmsNorm(x, weight, eps);
  const d = x.shape.at(-1) as number;
  if (weight.rank !== 1 || weight.shape[0] !== d)
    throw new Error(
      `rmsNorm: weight must be [${d}] for input [${x.shape.join(', ')}], got [${weight.shape.join(', ')}]`,
    );
  const forward = (xi: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc, withW: boolean) => {
    const r = tf.rsqrt(tf.add(tf.mean(tf.square(xi), -1, true), eps));
    save(withW ? [xi, r, w] : [xi, r]);
    return {
      value: tf.mul(tf.mul(xi, r), w),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, rs] = saved as [tf.Tensor, tf.Tensor];
        const ws = withW ? (saved[2] as tf.Tensor) : w;
        // y = w·x̂ with x̂ = x·r: dx = r·(g − x̂·mean(g·x̂)) for g = dy·w
        const xhat = tf.mul(xs, rs);
        const g = tf.mul(dy, ws);
        const dx = tf.mul(rs, tf.sub(g, tf.mul(xhat, tf.mean(tf.mul(g, xhat), -1, true))));
        if (!withW) return dx;
        return [dx, tf.sum(tf.reshape(tf.mul(dy, xhat), [-1, d]), 0)];
      },
    };
  };
  if (needsGrad(weight))
    return custom((xi: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => forward(xi, w, save, true))(x, weight);
  return custom((xi: tf.Tensor, save: tf.GradSaveFunc) => forward(xi, weight, save, false))(x);
}

/**
 * SwiGLU's gate, `silu(gate) · up` (transformers' `act_fn(gate_proj(x)) * up_proj(x)` with SiLU), as
 * one op whose backward pass keeps only its two inputs.
 *
 * @example
 * ```ts
 * const h = swiglu(gateProj.call(x), upProj.call(x));
 * ```
 */
export function swiglu(gate: tf.Tensor, up: tf.Tensor): tf.Tensor {
  if (gpuKernelsActive()) return kernels.swiglu(gate, up);
  if (gate.shape.join(',') !== up.shape.join(','))
    throw new Error(`swiglu: gate [${gate.shape.join(', ')}] and up [${up.shape.join(', ')}] must have one shape`);
  return custom((g: tf.Tensor, u: tf.Tensor, save: tf.GradSaveFunc) => {
    save([g, u]);
    return {
      value: tf.mul(tf.mul(g, tf.sigmoid(g)), u),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [gs, us] = saved as [tf.Tensor, tf.Tensor];
        const s = tf.sigmoid(gs);
        const silu = tf.mul(gs, s);
        // d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g)))
        const dsilu = tf.mul(s, tf.add(1, tf.mul(gs, tf.sub(1, s))));
        return [tf.mul(tf.mul(dy, us), dsilu), tf.mul(dy, silu)];
      },
    };
  })(gate, up);
}

/**
 * R [d, d] with x·R = rotate_half(x) = [−x₂, x₁] for rows x (its transpose rotates back). A product
 * with 0/±1 entries is exact, and on wasm it is 4× faster than split + neg + concat (which copy
 * through JavaScript there).
 */
function rotateHalfMatrix(d: number): tf.Tensor {
  const h = d / 2;
  const r = new Float32Array(d * d);
  for (let i = 0; i < h; i++) {
    r[(i + h) * d + i] = -1; // out[i] = −x[i + h]
    r[i * d + i + h] = 1; // out[i + h] = x[i]
  }
  return tf.tensor2d(r, [d, d]);
}

/** x·R over the last axis of x [..., d]. */
function times(x: tf.Tensor, r: tf.Tensor): tf.Tensor {
  const d = x.shape.at(-1) as number;
  return tf.reshape(tf.matMul(tf.reshape(x, [-1, d]), r), x.shape);
}

/**
 * Rotary position embedding, `x·cos + rotate_half(x)·sin` (transformers' `apply_rotary_pos_emb`),
 * for `x` [..., T, D] and tables `cos`, `sin` [T, D]. It is linear in `x`, so its backward pass
 * keeps no activation: dx = dy·cos + rotate_halfᵀ(dy·sin).
 *
 * @example
 * ```ts
 * const qRot = rope(q, cos, sin); // q: [batch, heads, seq, headDim]
 * ```
 */
export function rope(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const d = x.shape.at(-1) as number;
  if (d % 2 !== 0) throw new Error(`rope: the last dimension must be even, got ${d}`);
  if (gpuKernelsActive()) return kernels.applyRope(x, cos, sin);
  return custom((xi: tf.Tensor, save: tf.GradSaveFunc) => {
    save([cos, sin]);
    return {
      value: tf.tidy(() => tf.add(tf.mul(xi, cos), tf.mul(times(xi, rotateHalfMatrix(d)), sin))),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [c, s] = saved as [tf.Tensor, tf.Tensor];
        // dx = dy·cos + (dy·sin)·Rᵀ
        return tf.add(tf.mul(dy, c), times(tf.mul(dy, s), tf.transpose(rotateHalfMatrix(d))));
      },
    };
  })(x);
}
