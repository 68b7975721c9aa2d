import { qr } from '@lora/linalg';
import { baseWeight64, setFactorsAndResidual } from './base-weight';
import type { BuiltinInit } from './init-types';
import { LoraConfigError } from '../errors';

/**
 * OLoRA (Linear layers; any case, as PEFT): W = Q·R; B = Q[:, :r], A = R[:r] (no rescaling by s, as
 * PEFT), and W ← W − s·B·A so that the model is unchanged at init.
 */
export const oloraInit: BuiltinInit = {
  name: 'olora',
  kinds: ['linear'],
  matches: (v) => typeof v === 'string' && v.toLowerCase() === 'olora',
  init(ctx) {
    if (ctx.settings.fanInFanOut) {
      // PEFT 0.21's olora_init factors the stored [in, out] weight as it is (pissa_init transposes it
      // first): lora_A gets the shape [r, out], the forward pass fails unless in = out, and then the
      // model is not preserved at init. Nothing to match, so refuse.
      const base = ctx.layer.baseLayer;
      throw new LoraConfigError(
        `init_lora_weights='olora' does not work on a fan_in_fan_out layer (${base.constructor.name}, weight [${base.weight.shape.join(', ')}] stored [in, out]): ` +
          "PEFT 0.21 factors the weight without transposing it and builds lora_A of the wrong shape. Use 'pissa' (which PEFT transposes) or another initialisation",
      );
    }
    const m = baseWeight64(ctx, ctx.settings.initLoraWeights as string);
    const [out, inF] = [m.rows, m.cols];
    const r = ctx.settings.r;
    const { Q, R } = qr(m);
    const bData = new Float64Array(out * r);
    const aData = new Float64Array(r * inF);
    for (let i = 0; i < out; i++) for (let j = 0; j < r; j++) bData[i * r + j] = Q.data[i * Q.cols + j] ?? 0;
    for (let j = 0; j < r; j++)
      for (let c = 0; c < inF; c++) aData[j * inF + c] = j < R.rows ? (R.data[j * inF + c] as number) : 0;
    setFactorsAndResidual(ctx, aData, bData);
  },
};
