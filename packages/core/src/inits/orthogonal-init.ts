import * as tf from '@tensorflow/tfjs-core';
import { defaultRng } from '@lora/nn';
import { matrix64, qr } from '@lora/linalg';
import type { BuiltinInit } from './init-types';
import { LoraConfigError } from '../errors';

/**
 * `init_lora_weights = 'orthogonal'` (Linear layers), as PEFT: Q from the QR of an r×r Gaussian; A
 * from its even-indexed rows, B from its odd ones, so that B·A = 0 while both are non-zero. Draws in
 * PEFT's order (X, then A's, then B's Gaussian), so after the same seed A and B equal PEFT's.
 */
export const orthogonalInit: BuiltinInit = {
  name: 'orthogonal',
  kinds: ['linear'],
  matches: (v) => v === 'orthogonal',
  init(ctx) {
    const r = ctx.settings.r;
    if (r % 2 !== 0)
      throw new LoraConfigError(`Orthogonal initialization requires the LoRA rank to be even, got ${r} instead.`);
    const inF = ctx.loraA.shape[1] as number;
    const out = ctx.loraB.shape[0] as number;
    const g = defaultRng();
    const q = qr(matrix64(r, r, Float64Array.from(g.fillNormal(new Float32Array(r * r))))).Q;
    const half = r / 2;
    const ga = g.fillNormal(new Float32Array(inF * half)); // [in, r/2]
    const gb = g.fillNormal(new Float32Array(half * out)); // [r/2, out]
    const aData = new Float32Array(r * inF);
    const bData = new Float32Array(out * r);
    for (let j = 0; j < r; j++)
      for (let i = 0; i < inF; i++) {
        let v = 0; // (ga · q_odd)[i, j], q_odd = rows 0, 2, 4… of Q
        for (let k = 0; k < half; k++) v += (ga[i * half + k] as number) * (q.data[2 * k * r + j] as number);
        aData[j * inF + i] = v / 10;
      }
    for (let o = 0; o < out; o++)
      for (let j = 0; j < r; j++) {
        let v = 0; // (gbᵀ · q_even)[o, j], q_even = rows 1, 3, 5… of Q
        for (let k = 0; k < half; k++) v += (gb[k * out + o] as number) * (q.data[(2 * k + 1) * r + j] as number);
        bData[o * r + j] = v / 10;
      }
    tf.tidy(() => {
      ctx.loraA.assign(tf.tensor2d(aData, [r, inF]));
      ctx.loraB.assign(tf.tensor2d(bData, [out, r]));
    });
  },
};
