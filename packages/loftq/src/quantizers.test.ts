import * as tf from '@tensorflow/tfjs-core';
import { assertNoLeaks, initBackend } from '@lora/tensor';
import { describe, expect, it } from 'vitest';
import {
  NF4_CODE,
  NF4_THRESHOLDS,
  QuantizationError,
  int8Dequantize,
  int8Quantize,
  nf4Dequantize,
  nf4Quantize,
  nfDequantize,
  nfQuantize,
  normalFloatCodebook,
} from '@lora/loftq';
import { nf4Codes } from './nf4';
import { nfCodes } from './normal-float';
import { gmat, mat, notes, readFixture } from './oracle.test-util';

await initBackend('cpu');
const fx = readFixture('quantizers.safetensors');
const f32 = (name: string) => Float32Array.from(fx[name]?.dataSync() as Float32Array);
const ints = (name: string) => Array.from(fx[name]?.dataSync() as Int32Array);
const shape = (name: string) => fx[name]?.shape as number[];

/** The oracle's inputs: regenerated with the reference's LCG where it did not store them. */
const inputs: Record<string, { data: Float32Array; shape: number[] }> = {
  spec: { data: gmat(64, 128, 71, 0.02), shape: [64, 128] },
  golden: { data: mat(1, 64, 7, 1.0), shape: [1, 64] },
  odd: { data: mat(7, 13, 5, 0.3), shape: [7, 13] },
};
const input = (kind: string, name: string) =>
  inputs[name] ?? { data: f32(`${kind}.${name}.w`), shape: shape(`${kind}.${name}.w`) };

describe('bitsandbytes NF4', () => {
  it.each(['spec', 'golden', 'odd', 'edges', 'zero-block', 'negmax'])(
    '%s: packed bytes, absmax, codes and values equal the oracle exactly',
    (name) => {
      const q = nf4Quantize(input('nf4', name));
      expect(Array.from(q.packed)).toEqual(ints(`nf4.${name}.packed`));
      expect(Array.from(q.absmax)).toEqual(Array.from(f32(`nf4.${name}.absmax`)));
      if (fx[`nf4.${name}.codes`]) expect(Array.from(nf4Codes(q))).toEqual(ints(`nf4.${name}.codes`));
      if (fx[`nf4.${name}.dequantized`]) {
        const back = assertNoLeaks(() => nf4Dequantize(q));
        expect(back.shape).toEqual(q.shape);
        expect(Array.from(back.dataSync())).toEqual(Array.from(f32(`nf4.${name}.dequantized`)));
        back.dispose();
      }
    },
  );

  it("reproduces the reference's golden block (§7.4): absmax, first codes, max error", () => {
    const golden = notes().nf4_golden;
    const q = nf4Quantize(inputs.golden as { data: Float32Array; shape: number[] });
    expect(q.absmax[0]).toBe(Math.fround(golden.absmax));
    expect(Array.from(nf4Codes(q).slice(0, 16))).toEqual(golden.first_codes);
    expect(golden.first_codes).toEqual([2, 14, 10, 14, 0, 14, 4, 0, 0, 15, 15, 8, 6, 8, 10, 13]);
    const back = nf4Dequantize(q);
    const w = (inputs.golden as { data: Float32Array }).data;
    const err = Math.max(...Array.from(back.dataSync(), (v, i) => Math.abs(v - (w[i] as number))));
    expect(err).toBeCloseTo(0.137571, 6);
    back.dispose();
  });

  it('block size 128, and a value on a threshold takes the lower code', () => {
    const q = nf4Quantize(inputs.spec as { data: Float32Array; shape: number[] }, { blockSize: 128 });
    expect(Array.from(q.packed)).toEqual(ints('nf4.spec-b128.packed'));
    expect(Array.from(q.absmax)).toEqual(Array.from(f32('nf4.spec-b128.absmax')));
    // absmax 1: x is its own normalised value
    const onThreshold = nf4Quantize({ data: [1, NF4_THRESHOLDS[7] as number, 0, -1], shape: [4] });
    expect(Array.from(nf4Codes(onThreshold))).toEqual([15, 7, 7, 0]);
    expect(NF4_CODE[7]).toBe(0);
  });
});

describe('bitsandbytes vectorwise int8', () => {
  it.each([
    ['spec', false],
    ['spec', true],
    ['halves', false],
    ['halves', true],
    ['zero-row', false],
    ['zero-row', true],
    ['small', false],
    ['small', true],
  ] as const)('%s (float16Input %s): codes, row absmax and values equal the oracle exactly', (name, f16) => {
    const tag = `int8${f16 ? '-f16' : ''}.${name}`;
    const w = input('int8', name);
    const q = int8Quantize(w, { float16Input: f16 });
    expect(Array.from(q.values)).toEqual(ints(`${tag}.q`));
    expect(Array.from(q.absmax)).toEqual(Array.from(f32(`${tag}.scb`)));
    if (fx[`${tag}.dequantized`]) {
      const back = int8Dequantize(q);
      expect(Array.from(back.dataSync())).toEqual(Array.from(f32(`${tag}.dequantized`)));
      back.dispose();
    }
  });

  it('rounds half to even: 2.5 → 2, −3.5 → −4, 0.5 → 0, 1.5 → 2 (scale 1)', () => {
    const q = int8Quantize({ data: [127, 2.5, -3.5, 0.5, 1.5, -0.5], shape: [1, 6] });
    expect(Array.from(q.values)).toEqual([127, 2, -4, 0, 2, 0]);
  });
});

describe('the LoftQ authors’ normal-float quantizer', () => {
  it.each([2, 3, 4] as const)('the %i-bit code book equals NFQuantizer.create_normal_map in float32', (bits) => {
    expect(Array.from(normalFloatCodebook(bits))).toEqual(Array.from(f32(`nfq${bits}.book`)));
  });

  it('the 4-bit book is bitsandbytes’ NF4 (equal in float32) and the 2-bit one is [-1, 0, 0.338, 1]', () => {
    expect(Array.from(normalFloatCodebook(4))).toEqual(Array.from(NF4_CODE));
    expect(Array.from(normalFloatCodebook(2))).toEqual([-1, 0, Math.fround(0.33791524171829224), 1]);
  });

  it.each([
    [2, 'spec'],
    [2, 'edges'],
    [3, 'spec'],
    [3, 'edges'],
    [4, 'spec'],
    [4, 'edges'],
  ] as const)('%i bits, %s: packed bytes, block max, codes and values equal the oracle exactly', (bits, name) => {
    const q = nfQuantize(input(`nfq${bits}`, name), { bits });
    expect(Array.from(q.packed)).toEqual(ints(`nfq${bits}.${name}.packed`));
    expect(Array.from(q.absmax)).toEqual(Array.from(f32(`nfq${bits}.${name}.absmax`)));
    if (fx[`nfq${bits}.${name}.codes`]) expect(Array.from(nfCodes(q))).toEqual(ints(`nfq${bits}.${name}.codes`));
    if (fx[`nfq${bits}.${name}.dequantized`]) {
      const back = nfDequantize(q);
      expect(Array.from(back.dataSync())).toEqual(Array.from(f32(`nfq${bits}.${name}.dequantized`)));
      back.dispose();
    }
  });
});

describe('bad input', () => {
  const w = { data: new Float32Array(96).fill(0.5), shape: [8, 12] };

  it('bits outside 2, 3, 4 for the normal-float quantizer', () => {
    expect(() => nfQuantize(w, { bits: 5 as 4 })).toThrow(QuantizationError);
    expect(() => nfQuantize(w, { bits: 5 as 4 })).toThrow(
      'nfQuantize: bits is 5; the normal-float quantizer has 2, 3 or 4 bits (8 bits is int8Quantize)',
    );
    expect(() => normalFloatCodebook(8 as 4)).toThrow('bits is 8');
  });

  it('a block size that does not divide, and one that is not a positive integer', () => {
    expect(() => nfQuantize(w, { bits: 2, blockSize: 64 })).toThrow(
      "nfQuantize: blockSize 64 does not divide the weight's 96 values (shape [8, 12])",
    );
    expect(() => nf4Quantize(w, { blockSize: 0 })).toThrow(
      'nf4Quantize: blockSize is 0; it must be a positive integer',
    );
    expect(() => nf4Quantize(w, { blockSize: 6.5 })).toThrow('blockSize is 6.5');
  });

  it('non-2-D weights for int8, non-finite values, shapes that do not match the data', () => {
    expect(() => int8Quantize({ data: new Float32Array(8), shape: [2, 2, 2] })).toThrow(
      "int8Quantize: the weight must be 2-D ([out, in], as a Linear's), got shape [2, 2, 2] (3-D)",
    );
    expect(() => nf4Quantize({ data: [1, Number.NaN, 2, 3], shape: [2, 2] })).toThrow(
      'nf4Quantize: the weight holds NaN at flat index 1',
    );
    expect(() => nf4Quantize({ data: [1, 2, 3], shape: [2, 2] })).toThrow('holds 4 values but the data has 3');
    const e = (() => {
      try {
        nfQuantize(w, { bits: 2, blockSize: 64 });
      } catch (err) {
        return err as QuantizationError;
      }
    })();
    expect(e?.option).toBe('blockSize');
  });

  it('tensors are read, not kept: quantizing a tensor leaves the tensor count unchanged', () => {
    const t = tf.tensor2d(mat(4, 16, 3, 1), [4, 16]);
    const q = assertNoLeaks(() => nf4Quantize(t));
    expect(q.shape).toEqual([4, 16]);
    expect(Array.from(q.packed)).toEqual(Array.from(nf4Quantize({ data: mat(4, 16, 3, 1), shape: [4, 16] }).packed));
    t.dispose();
  });
});
