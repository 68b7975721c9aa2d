import type * as tf from '@tensorflow/tfjs-core';
import type { TunerLayer } from './tuner-layer';

/**
 * ΔW = s·B·A of one adapter on one layer, in the base weight's layout (PEFT's `get_delta_weight`):
 * what intruder-dimension reduction, weighted combination and conversion read. The caller owns it.
 *
 * @example
 * ```ts
 * for (const [path, layer] of peft.loraLayers()) {
 *   const delta = getDeltaWeight(layer, 'default');
 *   // … compare with layer.baseLayer.weight …
 *   delta.dispose();
 * }
 * ```
 */
export function getDeltaWeight(layer: TunerLayer, adapterName: string): tf.Tensor {
  if (!layer.settings.has(adapterName))
    throw new Error(
      `adapter '${adapterName}' is not on this ${layer.constructor.name}; it has ${[...layer.settings.keys()].join(', ') || 'none'}`,
    );
  return layer.getDeltaWeight(adapterName);
}
