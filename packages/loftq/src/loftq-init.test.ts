import * as tf from '@tensorflow/tfjs-core';
import { assertNoLeaks, initBackend, maxRelativeError } from '@lora/tensor';
import { describe, expect, it } from 'vitest';
import { QuantizationError, loftqInit } from '@lora/loftq';
import { gmat, lapmat, notes, readFixture } from './oracle.test-util';

await initBackend('cpu');
const fx = readFixture('quantizers.safetensors');
const runs = notes().loftq as Record<
  string,
  { bits: 2 | 3 | 4 | 8; rank: number; shape: [number, number]; errors: number[] }
>;
const weights: Record<string, () => Float32Array> = {
  W: () => gmat(64, 128, 71, 0.02),
  tall: () => gmat(96, 40, 72, 0.05),
  lap: () => lapmat(64, 128, 73, 0.02),
};
const weightOf = (tag: string) =>
  (tag.startsWith('tall') ? weights.tall : tag.startsWith('lap') ? weights.lap : weights.W)?.() as Float32Array;

/** ‖W − Q − B·A‖_F / ‖W‖_F of a result. */
async function relativeError(w: Float32Array, r: { dequantized: tf.Tensor; loraA: tf.Tensor; loraB: tf.Tensor }) {
  const q = await r.dequantized.data();
  const ba = tf.matMul(r.loraB, r.loraA);
  const p = await ba.data();
  ba.dispose();
  let num = 0;
  let den = 0;
  for (let i = 0; i < w.length; i++) {
    num += ((w[i] as number) - (q[i] as number) - (p[i] as number)) ** 2;
    den += (w[i] as number) ** 2;
  }
  return Math.sqrt(num / den);
}

describe('loftqInit against PEFT’s loftq_init with the spelled-out quantizers', () => {
  it.each(['b4r8', 'b2r8', 'b8r8', 'tall-b2r4'])('%s, one step: Q exact, B·A within 1e-4', async (tag) => {
    const run = runs[tag] as (typeof runs)[string];
    const w = weightOf(tag);
    const r = await assertNoLeaks(() =>
      loftqInit({ data: w, shape: run.shape }, { numBits: run.bits, reducedRank: run.rank, numIter: 1 }),
    );
    expect(r.loraA.shape).toEqual([run.rank, run.shape[1]]);
    expect(r.loraB.shape).toEqual([run.shape[0], run.rank]);
    const ba = tf.matMul(r.loraB, r.loraA);
    expect(maxRelativeError(await ba.data(), fx[`loftq.${tag}.t1.ba`]?.dataSync() as Float32Array)).toBeLessThan(1e-4);
    if (tag === 'b4r8') {
      // one step quantizes W itself: Q is the NF4 fixture's dequantized weight, bit for bit
      expect(Array.from(await r.dequantized.data())).toEqual(
        Array.from(fx['nf4.spec.dequantized']?.dataSync() as Float32Array),
      );
      // ‖A‖ = ‖B‖ (√S into each factor), and A, B themselves match up to the sign of each singular pair
      const [na, nb] = [tf.norm(r.loraA), tf.norm(r.loraB)];
      expect((await na.data())[0]).toBeCloseTo((await nb.data())[0] as number, 5);
      tf.dispose([na, nb]);
    }
    tf.dispose([ba, r.dequantized, r.loraA, r.loraB]);
  });

  it.each(Object.keys(runs))('%s: ‖W − Q − B·A‖/‖W‖ after each of 5 steps within 1e-3 of the oracle', async (tag) => {
    const run = runs[tag] as (typeof runs)[string];
    const w = weightOf(tag);
    const seen: number[] = [];
    const r = await loftqInit(
      { data: w, shape: run.shape },
      { numBits: run.bits, reducedRank: run.rank, numIter: 5, onIteration: (s) => seen.push(s.relativeError) },
    );
    expect(seen).toHaveLength(5);
    for (let t = 0; t < 5; t++)
      expect(Math.abs((seen[t] as number) - (run.errors[t] as number))).toBeLessThan(1e-3 * (run.errors[t] as number));
    // the result is the last step's
    expect(Math.abs((await relativeError(w, r)) - (seen[4] as number))).toBeLessThan(1e-6);
    tf.dispose([r.dequantized, r.loraA, r.loraB]);
  });

  it('after 5 steps Q and B·A match the oracle’s (4 bits)', async () => {
    const r = await loftqInit(
      { data: weights.W?.() as Float32Array, shape: [64, 128] },
      { numBits: 4, reducedRank: 8, numIter: 5 },
    );
    const ba = tf.matMul(r.loraB, r.loraA);
    expect(maxRelativeError(await ba.data(), fx['loftq.b4r8.t5.ba']?.dataSync() as Float32Array)).toBeLessThan(1e-3);
    // the residual each step quantizes comes from float32 products (ours and torch's sum in different orders):
    // a block's absmax moves in the last bits, and a value near a threshold may take the neighbouring code
    const q = await r.dequantized.data();
    const ref = fx['loftq.b4r8.t5.q']?.dataSync() as Float32Array;
    const scale = Math.max(...Array.from(ref, Math.abs));
    const far = q.filter((v, i) => Math.abs(v - (ref[i] as number)) > 1e-5 * scale).length;
    expect(far / q.length).toBeLessThan(1e-3);
    tf.dispose([ba, r.dequantized, r.loraA, r.loraB]);
  });

  it('the error falls with steps at 4 and 3 bits, and at 2 bits on heavy-tailed weights; on Gaussian weights 2 bits turns up after 3 steps (the oracle too)', () => {
    const falling = (e: number[]) => e.every((v, i) => i === 0 || v < (e[i - 1] as number));
    for (const tag of ['b4r8', 'b4r4', 'b4r16', 'b3r8', 'b8r8', 'lap-b2r8', 'lap-b4r8'])
      expect(falling(runs[tag]?.errors as number[]), tag).toBe(true);
    const g2 = runs.b2r8?.errors as number[];
    expect(g2[1]).toBeLessThan(g2[0] as number);
    expect(g2[4]).toBeGreaterThan(g2[2] as number);
  });
});

describe('loftqInit bad input', () => {
  const w = { data: gmat(16, 32, 1, 0.1), shape: [16, 32] };
  it.each([
    [{ numBits: 5, reducedRank: 4 }, 'numBits', 'loftqInit: numBits is 5; LoftQ quantizes with 2, 3 or 4 bits'],
    [
      { numBits: 4, reducedRank: 16 },
      'reducedRank',
      'loftqInit: reducedRank 16 is not below min(out, in) = 16 of the weight [16, 32]',
    ],
    [{ numBits: 4, reducedRank: 0 }, 'reducedRank', 'reducedRank is 0; it must be a positive integer'],
    [{ numBits: 4, reducedRank: 4, numIter: 0 }, 'numIter', 'Number of iterations must be greater than 0'],
    [
      { numBits: 2, reducedRank: 4, blockSize: 48 },
      'blockSize',
      'at 2 bits the normal-float quantizer needs the block size (48) to divide',
    ],
  ] as const)('%o → %s', async (options, option, message) => {
    const before = tf.memory().numTensors;
    const e = await loftqInit(w, options as never).catch((err) => err);
    expect(e).toBeInstanceOf(QuantizationError);
    expect(e.option).toBe(option);
    expect(e.message).toContain(message);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('a weight that is not 2-D, and a weight with NaN', async () => {
    await expect(loftqInit({ data: new Float32Array(8), shape: [8] }, { numBits: 4, reducedRank: 1 })).rejects.toThrow(
      "loftqInit: the weight must be 2-D ([out, in], as a Linear's), got shape [8] (1-D)",
    );
    const t = tf.tensor2d([1, Number.NaN, 2, 3, 4, 5], [2, 3]);
    await expect(loftqInit(t, { numBits: 4, reducedRank: 1 })).rejects.toThrow('the weight holds NaN at flat index 1');
    t.dispose();
  });

  it('an aborted signal stops it and frees what it made', async () => {
    const c = new AbortController();
    c.abort(new Error('stop'));
    const before = tf.memory().numTensors;
    await expect(loftqInit(w, { numBits: 4, reducedRank: 2, signal: c.signal })).rejects.toThrow('stop');
    expect(tf.memory().numTensors).toBe(before);
  });
});
