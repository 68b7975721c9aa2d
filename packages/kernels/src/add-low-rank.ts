import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import { scaledOnWebgpu } from './add-scaled';
import { optionsRef } from './options';
import {
  type WebGPUProgramLike,
  flat,
  registerGradientOnce,
  registerWebGPUKernel,
  reshaped,
  runKernel,
  sizeOf,
  once,
} from './webgpu-program';

const FWD = 'LoraAddLowRank';

/** Rows of the output each thread computes (one column of each): the r values of B's row are read once for all of them. */
const ROWS = 4;

/**
 * out = base + scale·h·bᵀ over flat [rows, o] (base), [rows, r] (h), [o, r] (b). A thread computes one
 * column of {@link ROWS} consecutive rows: neighbouring threads take neighbouring columns, so the
 * reads of base and the writes are coalesced and a warp's reads of b stay within a few cache lines
 * (b's rows of neighbouring columns are adjacent), while h's values are the same for the whole warp.
 * The r-long sum (r is LoRA's rank) is taken first and scaled once, as PEFT's
 * `result + lora_B(lora_A(x)) * scaling` does.
 */
function program(rows: number, o: number): WebGPUProgramLike {
  const blocks = Math.ceil(rows / ROWS);
  const size = blocks * o;
  const wg = 64;
  const acc = Array.from({ length: ROWS }, (_, i) => `var acc${i} = 0.0;`).join(' ');
  const hRow = Array.from(
    { length: ROWS },
    (_, i) => `let h${i} = min(row0 + ${i}, uniforms.rows - 1) * uniforms.r;`,
  ).join(' ');
  const fmas = Array.from({ length: ROWS }, (_, i) => `acc${i} = fma(H[h${i} + k], bv, acc${i});`).join(' ');
  const writes = Array.from(
    { length: ROWS },
    (_, i) => `if (row0 + ${i} < uniforms.rows) {
            let e = (row0 + ${i}) * uniforms.o + col;
            setOutputAtIndex(e, base[e] + acc${i} * uniforms.scale);
          }`,
  ).join('\n          ');
  return {
    outputShape: [rows * o],
    shaderKey: `${FWD}_rows${ROWS}`,
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(size / wg), 1, 1],
    variableNames: ['base', 'H', 'B'],
    workgroupSize: [wg, 1, 1],
    size: true,
    uniforms: 'o : i32, r : i32, rows : i32, threads : i32, scale : f32,',
    getUserCode: () => `
      fn main(index : i32) {
        if (index < uniforms.threads) {
          let col = index % uniforms.o;
          let row0 = (index / uniforms.o) * ${ROWS};
          ${hRow}
          ${acc}
          let b0 = col * uniforms.r;
          for (var k = 0; k < uniforms.r; k = k + 1) {
            let bv = B[b0 + k];
            ${fmas}
          }
          ${writes}
        }
      }`,
  };
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { base, h, b } = inputs as { base: tf.TensorInfo; h: tf.TensorInfo; b: tf.TensorInfo };
    const [o, r] = b.shape as [number, number];
    const rows = sizeOf(base.shape) / o;
    const out = backend.runWebGPUProgram(program(rows, o), [flat(base), flat(h), flat(b)], 'float32', [
      { type: 'int32', data: [o] },
      { type: 'int32', data: [r] },
      { type: 'int32', data: [rows] },
      { type: 'int32', data: [Math.ceil(rows / ROWS) * o] },
      { type: 'float32', data: [attrs.scale as number] },
    ]);
    return reshaped(out, base.shape);
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['h', 'b'],
    gradFunc: (dy, saved, attrs) => {
      const [h, b] = saved as [tf.Tensor, tf.Tensor];
      const [o, r] = b.shape as [number, number];
      const scale = (attrs as { scale: number }).scale;
      // PEFT's autograd: d(lora) = dy·s, then d(h) = d(lora)·B and d(B) = d(lora)ᵀ·h. Both factor
      // gradients are small ([rows, r], [o, r]) and computed here at once, so that the scaled dy (as
      // large as the layer's output) is freed now, not held until the backward pass ends.
      const [dh, db] = tf.tidy(() => {
        const dyS = tf.reshape(scaledOnWebgpu(dy as tf.Tensor, scale), [-1, o]);
        return [tf.reshape(tf.matMul(dyS, b), h.shape), tf.matMul(dyS, tf.reshape(h, [-1, r]), true, false)];
      }) as [tf.Tensor, tf.Tensor];
      return { base: () => tf.clone(dy as tf.Tensor), h: () => dh, b: () => db };
    },
  });
});

/** True when {@link addLowRank} runs its fused webgpu kernel (webgpu, `fused` and `fusedLora` on). */
export function fusedLoraActive(): boolean {
  return fusedActive() && optionsRef().fusedLora;
}

/**
 * `base + scale·h·bᵀ` — how a LoRA layer adds `s·lora_B(h)` (h = lora_A(x), `[..., r]`; b = lora_B's
 * weight `[out, r]`) to the base output `[..., out]`. On webgpu with fused kernels (and `fusedLora`)
 * the product, the scale and the add are one dispatch, and the backward pass is the scaled dy and
 * the two factor products; elsewhere the composite `base + (h·bᵀ)·scale`.
 *
 * @example
 * ```ts
 * const h = loraA.call(x);                             // [batch, seq, r]
 * const y = addLowRank(base, h, loraB.weight, alpha / r); // [batch, seq, out]
 * ```
 */
export function addLowRank(base: tf.Tensor, h: tf.Tensor, b: tf.Tensor, scale: number): tf.Tensor {
  if (b.rank !== 2)
    throw new Error(`addLowRank: b must be lora_B's weight [out, r], got shape [${b.shape.join(', ')}]`);
  const [o, r] = b.shape as [number, number];
  const lead = (t: tf.Tensor) => t.shape.slice(0, -1).join(',');
  if (base.shape.at(-1) !== o || h.shape.at(-1) !== r || lead(base) !== lead(h))
    throw new Error(
      `addLowRank: base [${base.shape.join(', ')}], h [${h.shape.join(', ')}] and b [${b.shape.join(', ')}] do not fit: base must be [..., ${o}] and h [..., ${r}] with the same leading axes`,
    );
  if (fusedLoraActive() && base.dtype === 'float32' && h.dtype === 'float32' && b.dtype === 'float32') {
    register();
    return runKernel(FWD, { base, h, b }, { scale });
  }
  return tf.tidy(() => {
    const lora = tf.reshape(tf.matMul(tf.reshape(h, [-1, r]), b, false, true), base.shape);
    return tf.add(base, tf.mul(lora, scale));
  });
}
