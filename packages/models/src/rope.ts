import * as tf from '@tensorflow/tfjs-core';
import type { RopeParameters } from './llama-config';

/**
 * RoPE inverse frequencies as transformers computes them (float32), with the linear and llama3
 * scalings. Returns the frequencies and the attention scaling applied to cos/sin (1 for these types).
 */
export function ropeInverseFrequencies(headDim: number, rope: RopeParameters): Float32Array {
  const f = Math.fround;
  const half = headDim / 2;
  const inv = new Float32Array(half);
  // 1 / base^(2i/d), with the exponent and the power in float32 as torch computes them
  for (let i = 0; i < half; i++) inv[i] = f(1 / f(f(rope.ropeTheta) ** f((2 * i) / headDim)));
  if (rope.ropeType === 'linear')
    for (let i = 0; i < half; i++) inv[i] = f((inv[i] as number) / (rope.factor as number));
  if (rope.ropeType === 'llama3') {
    const factor = rope.factor as number;
    const low = rope.lowFreqFactor as number;
    const high = rope.highFreqFactor as number;
    const oldLen = rope.originalMaxPositionEmbeddings as number;
    const lowWavelen = oldLen / low;
    const highWavelen = oldLen / high;
    for (let i = 0; i < half; i++) {
      const freq = inv[i] as number;
      const wavelen = (2 * Math.PI) / freq;
      // long wavelengths are slowed by `factor`, short ones kept, the band between interpolated
      let scaled = wavelen > lowWavelen ? freq / factor : freq;
      if (!(wavelen < highWavelen) && !(wavelen > lowWavelen)) {
        const smooth = (oldLen / wavelen - low) / (high - low);
        scaled = (1 - smooth) * (scaled / factor) + smooth * scaled;
      }
      inv[i] = f(scaled);
    }
  }
  return inv;
}

/** cos and sin tables `[T, headDim]` for positions `start … start+T−1` (the halves repeated, as transformers). */
export function ropeTables(inv: Float32Array, start: number, length: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
  const d = inv.length * 2;
  const cos = new Float32Array(length * d);
  const sin = new Float32Array(length * d);
  for (let t = 0; t < length; t++) {
    for (let i = 0; i < inv.length; i++) {
      // position × frequency in float32, as torch's float matmul of positions and inv_freq
      const angle = Math.fround((start + t) * (inv[i] as number));
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[t * d + i] = c;
      cos[t * d + i + inv.length] = c;
      sin[t * d + i] = s;
      sin[t * d + i + inv.length] = s;
    }
  }
  return { cos: tf.tensor2d(cos, [length, d]), sin: tf.tensor2d(sin, [length, d]) };
}

// x·cos + rotate_half(x)·sin for x [B, H, T, D]: kept under this name, the code lives with the fused kernels
export { applyRope } from '@lora/kernels';
