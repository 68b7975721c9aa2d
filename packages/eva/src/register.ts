/**
 * Registers `init_lora_weights: 'eva'` with @lora/core when @lora/eva is imported. As PEFT's
 * `LoraLayer.update_layer` for "eva": B is zero and A keeps its construction draw until
 * `initializeLoraEvaWeights` sets it from the data.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraInitContext, lookupLoraInit, registerLoraInit } from '@lora/core';

/** The registered initialiser: B = 0 (the data pass sets A later). */
export function evaInit(ctx: LoraInitContext): void {
  ctx.loraB.assign(tf.zerosLike(ctx.loraB));
}

function registered(): boolean {
  try {
    lookupLoraInit('eva');
    return true;
  } catch {
    return false;
  }
}

// a second copy of this package (two bundles) finds the name taken and keeps the first registration
if (!registered()) registerLoraInit('eva', evaInit);
