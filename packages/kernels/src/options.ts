import * as tf from '@tensorflow/tfjs-core';

/** Which code paths `@lora/kernels`' ops take. Every path gives the same results to float32 rounding. */
export interface KernelOptions {
  /**
   * Fused WGSL kernels on the webgpu backend (RMSNorm, RoPE, SwiGLU, masked softmax, cross-entropy,
   * AdamW): one dispatch where the composite takes several. Other backends always run the composite.
   * Default true.
   */
  fused: boolean;
  /**
   * On webgpu, products with a transposed operand use matMul's transpose flags (its programs read
   * the operand transposed: no Transpose dispatch) and tfjs's own matMul gradient, which computes a
   * frozen operand's gradient only when something needs it. Off, or on other backends, transposes
   * are explicit: on wasm a flagged product is ~13× slower. Default true.
   */
  transposeFlags: boolean;
  /**
   * The program webgpu's BatchMatMul runs for large products: tfjs's own (`'tfjs'`) or this
   * package's register-blocked tiled program (`'tiled'`: 128² or 64² tiles by the output's size,
   * tfjs's programs for thin outputs; `'tiled-64'` / `'tiled-128'` force a tile, for measuring).
   * Default `'tfjs'`.
   */
  matmul: 'tfjs' | 'tiled' | 'tiled-64' | 'tiled-128';
}

export const DEFAULT_KERNEL_OPTIONS: Readonly<KernelOptions> = { fused: true, transposeFlags: true, matmul: 'tfjs' };
let current: KernelOptions = { ...DEFAULT_KERNEL_OPTIONS };

/** Sets the options in force (validated by `configureKernels`). */
export function setKernelOptions(options: KernelOptions): void {
  current = { ...options };
}

/** The options in force (see `configureKernels`). */
export function kernelOptions(): KernelOptions {
  return { ...current };
}

/** True when the active backend is webgpu and fused kernels are on: the ops then run their WGSL kernels. */
export function fusedActive(): boolean {
  return current.fused && tf.getBackend() === 'webgpu';
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
  return current.transposeFlags && tf.getBackend() === 'webgpu';
}
