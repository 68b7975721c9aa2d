import * as tf from '@tensorflow/tfjs-core';
import { type Matrix64, matrix64, transpose64 } from '@lora/linalg';
import type { LoraInitContext } from './init-types';

/**
 * The base weight of a Linear layer as a float64 [out, in] matrix (a fan_in_fan_out `[in, out]`
 * weight read transposed), read synchronously (a CPU-side backend, or webgpu in a browser): what the
 * decomposition inits factor.
 */
export function baseWeight64(ctx: LoraInitContext, init: string): Matrix64 {
  const w = ctx.baseWeight;
  const fifo = ctx.settings.fanInFanOut;
  const [out, inF] = (fifo ? [...w.shape].reverse() : w.shape) as [number, number];
  let values: Float32Array;
  try {
    values = w.dataSync() as Float32Array;
  } catch (e) {
    throw new Error(
      `init_lora_weights='${init}' reads the base weight synchronously, which this backend (${tf.getBackend()}) cannot do (${(e as Error).message}); build the LoRA model on the cpu or wasm backend, then switch`,
    );
  }
  const stored = fifo ? matrix64(inF, out, Float64Array.from(values)) : matrix64(out, inF, Float64Array.from(values));
  return fifo ? transpose64(stored) : stored;
}

/**
 * Sets A ([r, in]) and B ([out, r]) from float64 data, zeroes B's bias, and takes s·B·A out of the
 * base weight (in its own layout), so that the model is unchanged at init: PiSSA's and OLoRA's last step.
 */
export function setFactorsAndResidual(ctx: LoraInitContext, aData: Float64Array, bData: Float64Array): void {
  const r = ctx.settings.r;
  const [, inF] = ctx.loraA.shape as [number, number];
  const [out] = ctx.loraB.shape as [number, number];
  const w = ctx.baseWeight;
  tf.tidy(() => {
    ctx.loraA.assign(tf.tensor2d(Float32Array.from(aData), [r, inF]));
    ctx.loraB.assign(tf.tensor2d(Float32Array.from(bData), [out, r]));
    if (ctx.loraBBias) ctx.loraBBias.assign(tf.zeros([out]));
    const ba = tf.mul(tf.matMul(ctx.loraB, ctx.loraA), ctx.scaling);
    w.assign(tf.sub(w, ctx.settings.fanInFanOut ? tf.transpose(ba) : ba));
  });
}
