import { defaultRng } from '@lora/nn';
import { type Matrix64, svd, svdLowRank, transpose64 } from '@lora/linalg';
import { baseWeight64, setFactorsAndResidual } from './base-weight';
import type { BuiltinInit } from './init-types';
import { LoraConfigError } from '../errors';

/**
 * PiSSA (Linear layers), as PEFT: `'pissa'` takes the full SVD of W, `'pissa_niter_K'` a randomized
 * SVD with K subspace iterations (torch's `svd_lowrank`, drawn from the seeded generator); A =
 * diag(√(S/s))·Vh[:r], B = U[:, :r]·diag(√(S/s)), and W ← W − s·B·A so that the model is unchanged at
 * init. On a fan_in_fan_out base it decomposes Wᵀ, as PEFT.
 */
export const pissaInit: BuiltinInit = {
  name: 'pissa',
  kinds: ['linear'],
  matches: (v) => typeof v === 'string' && /^pissa(_niter_\d+)?$/.test(v),
  init(ctx) {
    const init = ctx.settings.initLoraWeights as string;
    const m = baseWeight64(ctx, init);
    const [out, inF] = [m.rows, m.cols];
    const r = ctx.settings.r;
    let U: Matrix64;
    let S: Float64Array;
    let Vh: Matrix64;
    if (init === 'pissa') ({ U, S, Vh } = svd(m));
    else {
      const parts = init.split('_niter_');
      const niter = Number(parts[1]);
      if (parts.length !== 2 || !Number.isInteger(niter) || niter < 0)
        throw new LoraConfigError(
          `init_lora_weights should be 'pissa' or 'pissa_niter_[number of iters]', got ${init} instead.`,
        );
      const low = svdLowRank(m, { q: r, niter, seed: defaultRng().nextUint32(), sketchDtype: 'float32' });
      U = low.U;
      S = low.S;
      Vh = transpose64(low.V);
    }
    const bData = new Float64Array(out * r);
    const aData = new Float64Array(r * inF);
    for (let j = 0; j < Math.min(r, S.length); j++) {
      const root = Math.sqrt((S[j] as number) / ctx.scaling);
      for (let i = 0; i < out; i++) bData[i * r + j] = (U.data[i * U.cols + j] as number) * root;
      for (let c = 0; c < inF; c++) aData[j * inF + c] = (Vh.data[j * Vh.cols + c] as number) * root;
    }
    setFactorsAndResidual(ctx, aData, bData);
  },
};
