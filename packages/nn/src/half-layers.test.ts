import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend } from '@lora/tensor/testing';
import {
  Embedding,
  HalfEmbedding,
  HalfLinear,
  Linear,
  decodeHalfWords,
  encodeHalf,
  halfRowWords,
  halfTable,
  packHalfCodes,
  roundToHalf,
} from '@lora/nn';
import { bf16ToFloat32, f16BitsToNumber } from '@lora/tensor';

/** The same bits, or both NaN (a gather may quiet a NaN's payload nowhere here, but NaN is what counts). */
function sameBits(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let bad = 0;
  for (let i = 0; i < a.length; i++)
    if (ua[i] !== ub[i] && !(Number.isNaN(a[i] as number) && Number.isNaN(b[i] as number))) bad++;
  return bad;
}

const everyCode = Uint16Array.from({ length: 65536 }, (_, i) => i);

await describeEachBackend('16-bit weight storage', (backend) => {
  const packings = backend.name === 'webgpu' ? (['bytes'] as const) : (['pairs', 'bytes'] as const);
  for (const packing of packings) {
    for (const [format, via] of [
      ['bf16', 'ops'],
      ['f16', 'ops'],
      ['bf16', 'host'],
      ['f16', 'host'],
    ] as const) {
      it(`${packing}/${format} (${via}): every one of the 65 536 codes decodes to its exact float32 value`, async () => {
        // bf16: the code shifted into a float32's top half; f16: sign·2^e·(1+m/1024), subnormals, ±inf, NaN
        const want =
          format === 'bf16' ? bf16ToFloat32(everyCode) : Float32Array.from(everyCode, (c) => f16BitsToNumber(c));
        // as [256, 256] and as rows of an odd length, where the last word of a row is part-filled
        for (const [rows, cols] of [
          [256, 256],
          [65536 / 16 / 2, 32],
          [1, 65536],
        ] as const) {
          const before = tf.memory().numTensors;
          const words = tf.tensor2d(
            packHalfCodes(everyCode, rows, cols, packing),
            [rows, halfRowWords(cols, packing)],
            'int32',
          );
          const got = decodeHalfWords(words, cols, format, packing, { via });
          expect(got.shape).toEqual([rows, cols]);
          expect(sameBits((await got.data()) as Float32Array, want), `${rows}×${cols}`).toBe(0);
          tf.dispose([words, got]);
          expect(tf.memory().numTensors).toBe(before);
        }
        // every code as the low slot of a word whose high slot is large: the words near ±2³¹, where a
        // float32 division of the word is off by one (the first slot of a row is the low one)
        for (const high of [0x7fff, 0x8000, 0xffff, 0x7ffe, 0x0001]) {
          const pairs = new Uint16Array(2 * 65536);
          pairs.set(everyCode);
          pairs.fill(high, 65536);
          const w2 = tf.tensor2d(
            packHalfCodes(pairs, 1, 2 * 65536, packing),
            [1, halfRowWords(2 * 65536, packing)],
            'int32',
          );
          const got2 = decodeHalfWords(w2, 2 * 65536, format, packing, { via });
          const want2 = new Float32Array(2 * 65536);
          want2.set(want);
          want2.fill(want[high] as number, 65536);
          expect(sameBits((await got2.data()) as Float32Array, want2), `high slot ${high}`).toBe(0);
          tf.dispose([w2, got2]);
        }
        const odd = everyCode.subarray(0, 7 * 13);
        const words = tf.tensor2d(packHalfCodes(odd, 7, 13, packing), [7, halfRowWords(13, packing)], 'int32');
        const got = decodeHalfWords(words, 13, format, packing, { via });
        expect(sameBits((await got.data()) as Float32Array, want.subarray(0, 91))).toBe(0);
        tf.dispose([words, got]);
      });
    }

    it(`${packing}: HalfLinear equals a Linear holding the rounded weight; the gradient reaches x, never the codes`, async () => {
      const lin = new Linear(19, 11);
      const half = HalfLinear.fromLinear(lin, { format: 'bf16', packing });
      expect(half.weight.trainable).toBe(false);
      expect(half.weight.dtype).toBe('int32');
      const before = tf.memory().numTensors;
      const rounded = roundToHalf(lin.weight, 'bf16');
      const w = half.decodeWeight();
      expect(sameBits((await w.data()) as Float32Array, (await rounded.data()) as Float32Array)).toBe(0);
      const x = tf.randomNormal([2, 3, 19]);
      const ref = () =>
        tf.tidy(() => tf.add(tf.matMul(tf.reshape(x, [6, 19]), rounded, false, true), lin.bias as tf.Tensor));
      const y = half.call(x) as tf.Tensor;
      expect(y.shape).toEqual([2, 3, 11]);
      const want = ref();
      expect(Array.from(await y.data())).toEqual(Array.from(await want.data()));
      const { value, grads } = tf.variableGrads(() => tf.sum(half.call(x) as tf.Tensor) as tf.Scalar);
      expect(Object.keys(grads)).toEqual([half.bias?.name]);
      const gx = tf.grad((xin: tf.Tensor) => tf.sum(half.call(xin) as tf.Tensor))(x);
      const gxWant = tf.grad((xin: tf.Tensor) =>
        tf.sum(tf.reshape(tf.matMul(tf.reshape(xin, [6, 19]), rounded, false, true), [2, 3, 11])),
      )(x);
      const gd = await gx.data();
      const gw = await gxWant.data();
      for (let i = 0; i < gd.length; i++) expect(gd[i]).toBeCloseTo(gw[i] as number, 5);
      tf.dispose([rounded, w, x, y, want, value, gx, gxWant, ...Object.values(grads)]);
      expect(tf.memory().numTensors).toBe(before);
      lin.dispose();
      half.dispose();
    });

    it(`${packing}: HalfEmbedding decodes only the rows it gathers, as the rounded table`, async () => {
      const emb = new Embedding(23, 9);
      const half = HalfEmbedding.fromEmbedding(emb, { format: 'f16', packing });
      const before = tf.memory().numTensors;
      const ids = tf.tensor2d(
        [
          [0, 5, 22],
          [5, 5, 1],
        ],
        [2, 3],
        'int32',
      );
      const got = half.call(ids) as tf.Tensor;
      const rounded = roundToHalf(emb.weight, 'f16');
      const want = tf.tidy(() => tf.reshape(tf.gather(rounded, tf.reshape(ids, [-1])), [2, 3, 9]));
      expect(sameBits((await got.data()) as Float32Array, (await want.data()) as Float32Array)).toBe(0);
      tf.dispose([ids, got, rounded, want]);
      expect(tf.memory().numTensors).toBe(before);
      emb.dispose();
      half.dispose();
    });
  }

  it('rounding to 16 bits is round-to-nearest-even, as the host codecs (checked against torch in @lora/tensor)', async () => {
    const v = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 65504, 70000, 2 ** -25, -0, Number.NaN]);
    const t = tf.tensor1d(v);
    for (const format of ['bf16', 'f16'] as const) {
      const r = roundToHalf(t, format);
      const table = halfTable(format);
      const want = Float32Array.from(encodeHalf(v, format), (c) => table[c] as number);
      expect(sameBits((await r.data()) as Float32Array, want)).toBe(0);
      r.dispose();
    }
    t.dispose();
  });

  it('refuses a format or packing it does not know, naming the value', () => {
    expect(() => new HalfLinear(4, 4, { format: 'fp8' as never })).toThrow(
      /HalfLinear: format is "fp8"; 16-bit storage is 'bf16' or 'f16'/,
    );
    expect(() => new HalfEmbedding(4, 4, { packing: 'nibbles' as never })).toThrow(/packing is "nibbles"/);
    const half = new HalfLinear(4, 3, { bias: false });
    expect(() => half.setWeight(tf.zeros([4, 4]))).toThrow(/expected \[3, 4\], got \[4, 4\]/);
    expect(() => half.call(tf.zeros([2, 5]))).toThrow(/last dimension is 5 but the weight expects 4/);
    half.dispose();
  });
});
