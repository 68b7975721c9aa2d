import * as tf from '@tensorflow/tfjs-core';
import { normalInit } from './init';
import { Module, type Parameter } from './module';
import { affine } from './layers';

/**
 * transformers' `Conv1D` (`transformers.pytorch_utils.Conv1D`, the projection layer of GPT-2, GPT,
 * and their descendants): a linear layer whose weight is stored transposed, `[in, out]` (transformers'
 * `(nx, nf)`), so `y = x·W + b`. Despite transformers' name it convolves nothing. The constructor takes
 * transformers' argument order, **out first**: `new TransposedLinear(nf, nx)`. The state-dict names are
 * transformers' (`weight` `[nx, nf]`, `bias` `[nf]`), so GPT-2 checkpoints load as they are; after
 * `manualSeed(s)` the initial weight equals transformers' after `torch.manual_seed(s)` (N(0, 0.02²);
 * bias zeros). `@lora/core` wraps it with LoRA as PEFT does, with `fan_in_fan_out`.
 *
 * @example
 * ```ts
 * const cAttn = new TransposedLinear(3 * 768, 768); // GPT-2's c_attn: weight [768, 2304]
 * const qkv = cAttn.call(h); // h: [batch, seq, 768] → [batch, seq, 2304]
 * ```
 */
export class TransposedLinear extends Module {
  /** Output features (transformers' `nf`). */
  readonly nf: number;
  /** Input features (transformers' `nx`). */
  readonly nx: number;
  /** `[nx, nf]`: input features along the rows. */
  weight: Parameter;
  bias: Parameter;

  constructor(nf: number, nx: number) {
    super();
    for (const [what, v] of [
      ['nf (output features)', nf],
      ['nx (input features)', nx],
    ] as const) {
      if (!Number.isInteger(v) || v <= 0)
        throw new Error(`TransposedLinear: ${what} must be a positive integer, got ${v}`);
    }
    this.nf = nf;
    this.nx = nx;
    this.weight = this.registerParameter('weight', normalInit([nx, nf], 0.02));
    this.bias = this.registerParameter('bias', tf.zeros([nf]));
  }

  /** Input features (`nx`). */
  get inFeatures(): number {
    return this.nx;
  }

  /** Output features (`nf`). */
  get outFeatures(): number {
    return this.nf;
  }

  forward(x: tf.Tensor): tf.Tensor {
    return transposedLinear(x, this.weight, this.bias);
  }
}

/**
 * `x·W + b` for x of any rank `[..., in]` and W `[in, out]` (transformers' `Conv1D.forward`).
 *
 * @example
 * ```ts
 * const y = transposedLinear(x, w, b); // x: [2, 5, 8], w: [8, 24] → [2, 5, 24]
 * ```
 */
export function transposedLinear(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor | null = null): tf.Tensor {
  const inF = weight.shape[0] as number;
  if (x.shape.at(-1) !== inF) {
    throw new Error(
      `TransposedLinear: input's last dimension is ${x.shape.at(-1)} but the weight expects ${inF} (weight shape [${weight.shape.join(', ')}], stored [in, out])`,
    );
  }
  return affine(x, weight, bias);
}
