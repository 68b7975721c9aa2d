import * as tf from '@tensorflow/tfjs-core';
import { addLowRank, fusedLoraActive } from './add-low-rank';
import { scaledOnWebgpu } from './add-scaled';
import { chooseSplitK, chooseTile, matmulFeatures, runTiled, tiledMatmulProgram } from './matmul';
import { optionsRef } from './options';
import {
  type WebGPUBackendLike,
  flat,
  registerGradientOnce,
  registerWebGPUKernel,
  reshaped,
  runKernel,
  once,
} from './webgpu-program';

const FWD = 'LoraLinearLowRank';

/** The tiled program's tile for x·wᵀ with the low-rank term folded in, or null (then two dispatches). */
function fusedTile(m: number, n: number, k: number) {
  const { matmul, largeTileGroups, mediumTile, matmulSplitK } = optionsRef();
  if (matmul === 'tfjs' || n % 4 !== 0) return null;
  return chooseTile(matmul, 1, m, n, k, largeTileGroups, mediumTile, matmulSplitK);
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { x, w, h, b } = inputs as Record<'x' | 'w' | 'h' | 'b', tf.TensorInfo>;
    const [n, k] = w.shape as [number, number];
    const r = b.shape[1] as number;
    const m = x.shape.slice(0, -1).reduce((p, q) => p * q, 1);
    const tile = fusedTile(m, n, k);
    if (!tile) throw new Error(`${FWD}: no tile for [${m}, ${k}]·[${n}, ${k}]ᵀ (the op checks this first)`);
    const storage = (backend as WebGPUBackendLike).device.limits.maxComputeWorkgroupStorageSize ?? 16384;
    const vec4 = k % 4 === 0;
    const splits = chooseSplitK(1, m, n, k, tile);
    const program = tiledMatmulProgram([1, m, n], false, true, tile, storage, vec4, vec4, true, {
      ...matmulFeatures(k),
      splitK: splits,
    });
    const out = runTiled(
      backend as WebGPUBackendLike,
      program,
      [flat(x, [1, m, k]), flat(w, [1, n, k]), flat(h), flat(b)],
      [
        { type: 'int32', data: [m] },
        { type: 'int32', data: [n] },
        { type: 'int32', data: [k] },
        { type: 'int32', data: [1] },
        { type: 'int32', data: [1] },
        { type: 'int32', data: [r] },
        { type: 'float32', data: [attrs.scale as number] },
      ],
      splits,
      [1, m, n],
    );
    return reshaped(out, [...x.shape.slice(0, -1), n]);
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['x', 'w', 'h', 'b'],
    gradFunc: (dy, saved, attrs) => {
      const [x, w, h, b] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      const [n, k] = w.shape as [number, number];
      const r = b.shape[1] as number;
      const scale = (attrs as { scale: number }).scale;
      const dy2 = () => tf.reshape(dy as tf.Tensor, [-1, n]);
      // as addLowRank's: the factor gradients at once (small), so that dy·s is freed now
      const [dh, db] = tf.tidy(() => {
        const dyS = tf.reshape(scaledOnWebgpu(dy as tf.Tensor, scale), [-1, n]);
        return [tf.reshape(tf.matMul(dyS, b), h.shape), tf.matMul(dyS, tf.reshape(h, [-1, r]), true, false)];
      }) as [tf.Tensor, tf.Tensor];
      return {
        // what tfjs's matMul gradient of x·wᵀ computes; w's only when something needs it (a frozen base weight never)
        x: () => tf.reshape(tf.matMul(dy2(), w), x.shape),
        w: () => tf.matMul(dy2(), tf.reshape(x, [-1, k]), true, false),
        h: () => dh,
        b: () => db,
      };
    },
  });
});

/**
 * `x·wᵀ + scale·h·bᵀ`: a LoRA Linear's base product and its low-rank term (h = lora_A(x) `[..., r]`,
 * b = lora_B's weight `[out, r]`, w the base weight `[out, in]`). On webgpu with fused kernels, the
 * tiled matmul (where `chooseTile` takes the product and `out` is a multiple of 4) folds the
 * low-rank term into its accumulators before writing: one dispatch and one pass over the output.
 * Otherwise the product and then {@link addLowRank}.
 *
 * @example
 * ```ts
 * const h = loraA.call(x);
 * const y = linearLowRank(x, base.weight, h, loraB.weight, alpha / r); // base(x) + s·lora_B(h)
 * ```
 */
export function linearLowRank(x: tf.Tensor, w: tf.Tensor, h: tf.Tensor, b: tf.Tensor, scale: number): tf.Tensor {
  if (w.rank !== 2 || b.rank !== 2 || x.shape.at(-1) !== w.shape[1] || w.shape[0] !== b.shape[0])
    throw new Error(
      `linearLowRank: x [${x.shape.join(', ')}], w [${w.shape.join(', ')}] and b [${b.shape.join(', ')}] do not fit: w must be [out, in] with in = x's last axis, b [out, r]`,
    );
  const [n, k] = w.shape as [number, number];
  const m = x.size / k;
  const all32 = [x, w, h, b].every((t) => t.dtype === 'float32');
  if (fusedLoraActive() && all32 && h.size === m * (b.shape[1] as number) && fusedTile(m, n, k)) {
    register();
    return runKernel(FWD, { x, w, h, b }, { scale });
  }
  return tf.tidy(() => {
    const base = tf.reshape(tf.matMul(tf.reshape(x, [-1, k]), w, false, true), [...x.shape.slice(0, -1), n]);
    return addLowRank(base, h, b, scale);
  });
}
