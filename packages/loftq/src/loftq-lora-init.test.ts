import * as tf from '@tensorflow/tfjs-core';
import { LoraConfigError, getPeftModel } from '@lora/core';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { describe, expect, it } from 'vitest';
import '@lora/loftq';
import { baseNet } from './loftq-net.test-util';
import { notes, readFixture } from './oracle.test-util';

await initBackend('cpu');
const peftCases = notes().peft as Record<string, { bits: number; iter: number; r: number; alpha: number }>;

/** Entries farther apart than 1e-5 of the largest, as a fraction (codes near a threshold may round apart). */
function farFraction(a: Float32Array, b: Float32Array): number {
  const scale = Math.max(...Array.from(b, Math.abs));
  return a.filter((v, i) => Math.abs(v - (b[i] as number)) > 1e-5 * scale).length / a.length;
}

describe("init_lora_weights: 'loftq' against PEFT's get_peft_model (LoftQ with the spelled-out quantizers)", () => {
  it.each(Object.keys(peftCases))('%s: base weights, A, B and the output as PEFT made them', async (tag) => {
    const c = peftCases[tag] as (typeof peftCases)[string];
    const before = tf.memory().numTensors;
    const expected = readFixture(`${tag}.safetensors`);
    const peft = getPeftModel(baseNet(), {
      r: c.r,
      loraAlpha: c.alpha,
      targetModules: ['up', 'down'],
      initLoraWeights: 'loftq',
      loftqConfig: { loftqBits: c.bits, loftqIter: c.iter },
    });
    const probe = tf.zeros([1, 16]);
    expect(() => peft.call(probe)).toThrow(
      'init_lora_weights="loftq" is asynchronous): await peft.initialized() first',
    );
    probe.dispose();
    await peft.initialized();
    peft.eval();
    const ours = Object.fromEntries(peft.namedParameters());
    for (const m of ['up', 'down']) {
      const key = (s: string) => `base_model.model.${m}.${s}`;
      const w = (await ours[key('base_layer.weight')]?.data()) as Float32Array;
      const ref = expected[key('base_layer.weight')]?.dataSync() as Float32Array;
      if (c.iter === 1)
        expect(Array.from(w)).toEqual(Array.from(ref)); // Q of W itself: exact
      else expect(farFraction(w, ref)).toBeLessThan(2e-3);
      const ba = tf.matMul(
        ours[key('lora_B.default.weight')] as tf.Tensor,
        ours[key('lora_A.default.weight')] as tf.Tensor,
      );
      const baRef = tf.matMul(
        expected[key('lora_B.default.weight')] as tf.Tensor,
        expected[key('lora_A.default.weight')] as tf.Tensor,
      );
      expect(maxRelativeError(await ba.data(), await baRef.data())).toBeLessThan(c.iter === 1 ? 1e-4 : 1e-3);
      expect(Array.from((await ours[key('base_layer.bias')]?.data()) as Float32Array)).toEqual(
        Array.from(expected[key('base_layer.bias')]?.dataSync() as Float32Array),
      );
      tf.dispose([ba, baRef]);
    }
    // the head is no target: untouched
    expect(Array.from((await ours['base_model.model.head.weight']?.data()) as Float32Array)).toEqual(
      Array.from(expected['base_model.model.head.weight']?.dataSync() as Float32Array),
    );
    const y = peft.call(expected.x) as tf.Tensor;
    expect(maxRelativeError(await y.data(), expected.output?.dataSync() as Float32Array)).toBeLessThan(
      c.iter === 1 ? 1e-4 : 1e-3,
    );
    y.dispose();
    peft.dispose();
    tf.dispose(Object.values(expected));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('bad loftq_config values are LoraConfigErrors naming the field, and the adapter is removed', async () => {
    const make = (loftqConfig: { loftqBits: number; loftqIter: number }, r = 4) =>
      getPeftModel(baseNet(), { r, targetModules: ['up'], initLoraWeights: 'loftq', loftqConfig });
    expect(() => make({ loftqBits: 5, loftqIter: 1 })).toThrow(LoraConfigError);
    expect(() => make({ loftqBits: 5, loftqIter: 1 })).toThrow(
      "init_lora_weights='loftq' on 'up': loftq_config.loftq_bits is 5; LoftQ quantizes with 2, 3 or 4 bits",
    );
    const zeroIter = make({ loftqBits: 4, loftqIter: 0 });
    const e = await zeroIter.initialized().catch((err) => err);
    expect(e).toBeInstanceOf(LoraConfigError);
    expect(e.field).toBe('loftq_config.loftq_iter');
    expect(e.message).toContain('Number of iterations must be greater than 0');
    expect(zeroIter.peftConfig.size).toBe(0);
    const bigRank = make({ loftqBits: 4, loftqIter: 1 }, 16);
    await expect(bigRank.initialized()).rejects.toThrow(
      "init_lora_weights='loftq' on 'up': reducedRank 16 is not below min(out, in) = 16 of the weight [32, 16]",
    );
    zeroIter.dispose();
    bigRank.dispose();
  });
});
