import * as tf from '@tensorflow/tfjs-core';
import { ensureDispatchCache } from '@lora/tensor';
import { installMatmulOverride } from './matmul';
import { optionsRef } from './options';

/** Once webgpu is active: the dispatch cache, and the matmul override when the options want it (the default). */
function ensureWebgpu(): void {
  ensureDispatchCache();
  if (optionsRef().matmul !== 'tfjs') installMatmulOverride();
}

/** True when the active backend is webgpu and fused kernels are on: the ops then run their WGSL kernels. */
export function fusedActive(): boolean {
  if (tf.getBackend() !== 'webgpu') return false;
  ensureWebgpu();
  return optionsRef().fused;
}

/**
 * True when products should use matMul's transpose flags and tfjs's matMul gradient (webgpu with
 * `transposeFlags` on); false where explicit transposes are faster (wasm) or results must stay
 * identical to earlier releases (cpu, tensorflow).
 *
 * @example
 * ```ts
 * const y = preferTransposeFlags() ? tf.matMul(x, w, false, true) : tf.matMul(x, tf.transpose(w));
 * ```
 */
export function preferTransposeFlags(): boolean {
  if (tf.getBackend() !== 'webgpu') return false;
  ensureWebgpu();
  return optionsRef().transposeFlags;
}
