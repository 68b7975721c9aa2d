import * as tf from '@tensorflow/tfjs-core';
import type { Module } from '@lora/nn';

/**
 * One layer's mean gradient, in the weight's stored layout: on the backend (`tensor`, kept), or in
 * host memory (`values`) when offloaded, so that it takes no backend memory until its layer is
 * initialised.
 */
export type StoredGradient =
  | { shape: [number, number]; tensor: tf.Tensor2D; values?: undefined }
  | { shape: [number, number]; values: Float32Array; tensor?: undefined };

/** The gradients `preprocessLoraga` attached, by base module (PEFT's `module._peft_loraga_grad`). */
const attached = new WeakMap<Module, StoredGradient>();

/** Frees a stored gradient's backend tensor (host values need nothing). */
export function disposeStored(g: StoredGradient | undefined): void {
  g?.tensor?.dispose();
}

/** Attaches a gradient to a base module, replacing (and freeing) one attached before. */
export function attachGradient(module: Module, g: StoredGradient): void {
  const old = attached.get(module);
  if (old && old !== g) disposeStored(old);
  if (g.tensor) tf.keep(g.tensor);
  attached.set(module, g);
}

/** The gradient attached to a base module, left attached. */
export function peekGradient(module: Module): StoredGradient | undefined {
  return attached.get(module);
}

/** Takes the attached gradient off the module: the caller owns it (PEFT deletes the attribute after the init). */
export function takeGradient(module: Module): StoredGradient | undefined {
  const g = attached.get(module);
  attached.delete(module);
  return g;
}

/** The stored gradient as a tensor on the active backend (a new tensor; the caller disposes it). */
export function gradientTensor(g: StoredGradient): tf.Tensor2D {
  return g.tensor ? (tf.clone(g.tensor) as tf.Tensor2D) : tf.tensor2d(g.values, g.shape);
}

/**
 * Whether `preprocessLoraga` attached a gradient to this module (PEFT's
 * `hasattr(module, "_peft_loraga_grad")`); `getPeftModel` consumes it.
 *
 * @example
 * ```ts
 * await preprocessLoraga(model, config, trainStep);
 * hasLoraGaGradient(model.getSubmodule('layers.0.q_proj')); // true
 * ```
 */
export function hasLoraGaGradient(module: Module): boolean {
  return attached.has(module);
}

/**
 * Frees the gradients `preprocessLoraga` attached to the modules of `model` that `getPeftModel` has
 * not consumed (when the LoRA model is not made after all). Returns how many were freed.
 *
 * @example
 * ```ts
 * await preprocessLoraga(model, config, trainStep);
 * releaseLoraGaGradients(model); // changed our mind: nothing stays attached
 * ```
 */
export function releaseLoraGaGradients(model: Module): number {
  let n = 0;
  for (const [, m] of model.namedModules()) {
    const g = takeGradient(m);
    if (g) {
      disposeStored(g);
      n++;
    }
  }
  return n;
}
