import * as tf from '@tensorflow/tfjs-core';
import { type LoraInitContext, LoraConfigError } from '@lora/core';
import { QuantizationError } from './errors';
import { checkLoftqBits, loftqInit } from './loftq-init';

/** LoftQ inits run one layer at a time, so that memory stays near one layer's working set. */
let queue: Promise<unknown> = Promise.resolve();

function configError(e: unknown, ctx: LoraInitContext): never {
  if (!(e instanceof QuantizationError)) throw e;
  const field =
    e.option === 'numBits'
      ? 'loftq_config.loftq_bits'
      : e.option === 'numIter'
        ? 'loftq_config.loftq_iter'
        : e.option === 'reducedRank'
          ? 'r'
          : e.option;
  throw new LoraConfigError(
    `init_lora_weights='loftq' on '${ctx.path}': ${e.message.replace(/^loftqInit: /, '')}`.replace(
      /numBits is/,
      'loftq_config.loftq_bits is',
    ),
    { field },
  );
}

/**
 * `init_lora_weights: 'loftq'` (PEFT's `LoraLayer.loftq_init`): runs {@link loftqInit} on the layer's
 * weight with `loftqConfig.loftqBits`, `loftqConfig.loftqIter` and the adapter's r, then sets
 * lora_A = A, lora_B = B and the base weight to Q (kept in float32, as PEFT keeps it in the model's
 * dtype: save it and quantize the saved base to train over it). On a fan_in_fan_out base (weight
 * `[in, out]`) it works on Wᵀ, the layout bitsandbytes quantizes (PEFT works on the stored layout and
 * fails there unless the weight is square). Asynchronous: `await peft.initialized()`.
 */
export function loftqLoraInit(ctx: LoraInitContext): Promise<void> {
  const lc = ctx.config.loftqConfig;
  if (!lc)
    throw new LoraConfigError("`loftq_config` must be specified when `init_lora_weights` is 'loftq'.", {
      field: 'loftq_config',
    });
  try {
    checkLoftqBits(lc.loftqBits, 'loftqInit');
  } catch (e) {
    configError(e, ctx);
  }
  const run = async () => {
    // the adapter may have been deleted or replaced while earlier layers ran
    if (ctx.layer.settings.get(ctx.adapterName) !== ctx.settings || ctx.loraA.isDisposed) return;
    const transposed = ctx.settings.fanInFanOut;
    const w = transposed ? tf.transpose(ctx.baseWeight) : ctx.baseWeight;
    try {
      const { dequantized, loraA, loraB } = await loftqInit(w as tf.Tensor2D, {
        numBits: lc.loftqBits as 2 | 3 | 4 | 8,
        reducedRank: ctx.settings.r,
        numIter: lc.loftqIter,
      }).catch((e) => configError(e, ctx));
      ctx.loraA.assign(loraA);
      ctx.loraB.assign(loraB);
      tf.tidy(() => ctx.baseWeight.assign(transposed ? tf.transpose(dequantized) : dequantized));
      tf.dispose([dequantized, loraA, loraB]);
    } finally {
      if (w !== ctx.baseWeight) w.dispose();
    }
  };
  const next = queue.then(run, run);
  queue = next.catch(() => {});
  return next;
}
