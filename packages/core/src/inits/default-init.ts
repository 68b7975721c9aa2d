import * as tf from '@tensorflow/tfjs-core';
import { kaimingUniformDefault, normalInit } from '@lora/nn';
import type { LoraLayerKind } from '../layers/tuner-layer';
import type { BuiltinInit, LoraInitTarget } from './init-types';

const ALL_KINDS: readonly LoraLayerKind[] = ['linear', 'embedding', 'conv'];

function replace(v: tf.Variable, value: tf.Tensor): void {
  v.assign(value);
  value.dispose();
}

/**
 * PEFT's `reset_lora_parameters`: on Linear and convolution layers A is kaiming-uniform (`true`,
 * PyTorch's default for the layer, fan-in = in·∏kernel) or N(0, 1/r²) (`'gaussian'`), B and its bias
 * zero, so the adapter starts as a no-op; on Embedding layers (either value) A is zero and B is
 * redrawn N(0, 1).
 */
export function resetLoraParameters(
  ctx: Pick<LoraInitTarget, 'kind' | 'loraA' | 'loraB' | 'loraBBias' | 'settings'>,
  init: true | 'gaussian' = true,
): void {
  const { loraA: a, loraB: b } = ctx;
  if (ctx.kind === 'embedding') {
    replace(a, tf.zeros(a.shape));
    replace(b, normalInit(b.shape));
    return;
  }
  const fanIn = a.shape.slice(1).reduce((x, y) => x * y, 1);
  replace(a, init === true ? kaimingUniformDefault(a.shape, fanIn) : normalInit(a.shape, 1 / ctx.settings.r));
  replace(b, tf.zeros(b.shape));
  if (ctx.loraBBias) replace(ctx.loraBBias, tf.zeros(ctx.loraBBias.shape));
}

/** `init_lora_weights = true`: PEFT's default (see {@link resetLoraParameters}). */
export const defaultInit: BuiltinInit = {
  name: 'true',
  kinds: ALL_KINDS,
  matches: (v) => v === true,
  init: (ctx) => ctx.resetLoraParameters(true),
};

/** `init_lora_weights = false`: A and B keep the draws of PyTorch's layer construction (not a no-op). */
export const noInit: BuiltinInit = {
  name: 'false',
  kinds: ALL_KINDS,
  matches: (v) => v === false,
  init: () => {},
};

/** `init_lora_weights = 'gaussian'` (any case, as PEFT): A ~ N(0, 1/r²), B zero; embeddings take the default. */
export const gaussianInit: BuiltinInit = {
  name: 'gaussian',
  kinds: ALL_KINDS,
  matches: (v) => typeof v === 'string' && v.toLowerCase() === 'gaussian',
  init: (ctx) => ctx.resetLoraParameters('gaussian'),
};
