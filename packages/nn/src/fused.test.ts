import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import {
  crossEntropy,
  gradientsOf,
  linear,
  linearCrossEntropy,
  rmsNorm,
  rope,
  scaledDotProductAttention,
  swiglu,
  transposedVocabBlocks,
} from '@lora/nn';

const g = new Generator(7);
const randn = (shape: number[], scale = 1) => tf.tidy(() => tf.mul(g.randn(shape), scale));

/** Value and gradients of `f` at `xs`, by the fused op and by the reference written with plain tfjs ops. */
async function compare(
  fused: (...x: tf.Tensor[]) => tf.Tensor,
  reference: (...x: tf.Tensor[]) => tf.Tensor,
  xs: tf.Tensor[],
  tol = 1e-5,
): Promise<void> {
  const before = tf.memory().numTensors;
  // a fixed random cotangent, so that every output element weighs differently
  const probe = tf.tidy(() => reference(...xs));
  const dy = randn(probe.shape);
  probe.dispose();
  const a = gradientsOf(() => fused(...xs), xs, dy);
  const b = tf.engine().gradients(() => reference(...xs), xs, dy);
  expect(maxRelativeError(await a.value.data(), await b.value.data()), 'value').toBeLessThan(tol);
  for (let i = 0; i < xs.length; i++)
    expect(maxRelativeError(await a.grads[i]!.data(), await b.grads[i]!.data()), `gradient ${i}`).toBeLessThan(tol);
  tf.dispose([a.value, b.value, dy, ...(a.grads as tf.Tensor[]), ...b.grads]);
  expect(tf.memory().numTensors).toBe(before);
}

// transformers adds the float32 minimum; tfjs-webgpu's softmax turns a row of exactly that into NaN, and any value this low is equivalent
const FLOAT32_MIN = -3.4e38;

/** Attention as transformers' eager path writes it: repeat_kv, q·kᵀ·scale + additive mask, softmax, ·v. */
function naiveAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, keep: number[][] | null, causal: boolean): tf.Tensor {
  const [b, h, t, d] = q.shape as number[];
  const [, hkv, s] = k.shape as number[];
  const rep = h! / hkv!;
  const repeat = (x: tf.Tensor) =>
    tf.concat(
      Array.from({ length: h! }, (_, i) => tf.slice(x, [0, Math.floor(i / rep), 0, 0], [b!, 1, s!, d!])),
      1,
    );
  const allowed = new Float32Array(b! * t! * s!);
  for (let bi = 0; bi < b!; bi++)
    for (let i = 0; i < t!; i++)
      for (let j = 0; j < s!; j++)
        allowed[(bi * t! + i) * s! + j] = (!causal || j <= s! - t! + i) && (!keep || keep[bi]![j]) ? 1 : 0;
  const mask = tf.mul(tf.sub(1, tf.tensor4d(allowed, [b!, 1, t!, s!])), FLOAT32_MIN);
  const scores = tf.add(tf.mul(tf.matMul(q, repeat(k), false, true), 1 / Math.sqrt(d!)), mask);
  return tf.matMul(tf.softmax(scores), repeat(v));
}

await describeEachBackend('fused ops against their plain-tfjs definitions (value and gradient)', () => {
  it('scaledDotProductAttention: grouped heads, causal with cached keys, padding, query blocks', async () => {
    for (const { b, h, hkv, t, s, causal, keep, blockSize } of [
      { b: 1, h: 4, hkv: 2, t: 7, s: 7, causal: true, keep: null, blockSize: undefined },
      { b: 1, h: 3, hkv: 1, t: 9, s: 9, causal: true, keep: null, blockSize: 4 },
      { b: 2, h: 2, hkv: 2, t: 3, s: 8, causal: true, keep: null, blockSize: 2 }, // 5 positions in a cache
      {
        b: 2,
        h: 4,
        hkv: 2,
        t: 6,
        s: 6,
        causal: true,
        keep: [
          [1, 1, 1, 1, 0, 0],
          [0, 0, 1, 1, 1, 1],
        ],
        blockSize: 4,
      },
      {
        b: 2,
        h: 2,
        hkv: 1,
        t: 5,
        s: 5,
        causal: false,
        keep: [
          [1, 1, 0, 1, 1],
          [1, 1, 1, 1, 1],
        ],
        blockSize: 2,
      },
    ]) {
      const q = randn([b, h, t, 8]);
      const k = randn([b, hkv, s, 8]);
      const v = randn([b, hkv, s, 8]);
      const keyMask = keep ? tf.tensor2d(keep) : undefined;
      await compare(
        (qq, kk, vv) =>
          scaledDotProductAttention(qq!, kk!, vv!, {
            causal,
            ...(keyMask ? { keyMask } : {}),
            ...(blockSize ? { blockSize } : {}),
          }),
        (qq, kk, vv) => naiveAttention(qq!, kk!, vv!, keep, causal),
        [q, k, v],
      );
      tf.dispose([q, k, v, ...(keyMask ? [keyMask] : [])]);
    }
  });

  it('scaledDotProductAttention refuses shapes that do not fit, saying which', () => {
    const q = tf.zeros([1, 3, 4, 8]);
    const k = tf.zeros([1, 2, 4, 8]);
    expect(() => scaledDotProductAttention(q, k, k)).toThrow(/with 3 a multiple of Hkv/);
    expect(() =>
      scaledDotProductAttention(q, tf.zeros([1, 1, 2, 8]), tf.zeros([1, 1, 2, 8]), { causal: true }),
    ).toThrow(/at least as many keys \(2\) as queries \(4\)/);
    tf.dispose([q, k]);
  });

  it('rmsNorm, rope and swiglu, with trainable and frozen weights', async () => {
    const x = randn([2, 5, 16]);
    const w = randn([16]);
    await compare(
      (xx, ww) => rmsNorm(xx!, ww!, 1e-5),
      (xx, ww) => tf.mul(tf.mul(xx!, tf.rsqrt(tf.add(tf.mean(tf.square(xx!), -1, true), 1e-5))), ww!),
      [x, w],
    );
    const frozen = tf.variable(randn([16]), false);
    await compare(
      (xx) => rmsNorm(xx!, frozen, 1e-6),
      (xx) => tf.mul(tf.mul(xx!, tf.rsqrt(tf.add(tf.mean(tf.square(xx!), -1, true), 1e-6))), frozen),
      [x],
    );
    const q = randn([1, 3, 5, 8]);
    const cos = randn([5, 8]);
    const sin = randn([5, 8]);
    await compare(
      (qq) => rope(qq!, cos, sin),
      (qq) => {
        const [a, bb] = tf.split(qq!, 2, -1) as [tf.Tensor, tf.Tensor];
        return tf.add(tf.mul(qq!, cos), tf.mul(tf.concat([tf.neg(bb), a], -1), sin));
      },
      [q],
    );
    const gate = randn([3, 12]);
    const up = randn([3, 12]);
    await compare(swiglu, (gg, uu) => tf.mul(tf.mul(gg!, tf.sigmoid(gg!)), uu!), [gate, up]);
    tf.dispose([x, w, frozen, q, cos, sin, gate, up]);
  });

  it('crossEntropy and linearCrossEntropy (vocabulary blocks on wasm), ignored targets included', async () => {
    const targets = tf.tensor1d([3, -100, 4999, 0, 2047, 2048, 17], 'int32');
    const logits = randn([7, 5000], 3);
    await compare(
      (l) => crossEntropy(l!, targets),
      (l) => {
        const valid = tf.cast(tf.notEqual(targets, -100), 'float32');
        const picked = tf.sum(
          tf.mul(tf.logSoftmax(l!), tf.oneHot(tf.maximum(targets, tf.scalar(0, 'int32')), 5000)),
          -1,
        );
        return tf.div(tf.neg(tf.sum(tf.mul(picked, valid))), tf.sum(valid));
      },
      [logits],
    );
    const h = randn([7, 24]);
    const w = randn([5000, 24], 0.5);
    const frozen = tf.variable(w, false);
    const plain = (hh: tf.Tensor, ww: tf.Tensor) => crossEntropy(linear(hh, ww), targets);
    // rows in chunks of 3, the 5000-row vocabulary in blocks (on wasm); a frozen and a trainable W
    await compare(
      (hh) => linearCrossEntropy(hh!, frozen, targets, { chunkRows: 3 }),
      (hh) => plain(hh!, frozen),
      [h],
    );
    await compare(
      (hh, ww) => linearCrossEntropy(hh!, ww!, targets, { chunkRows: 3 }),
      (hh, ww) => plain(hh!, ww!),
      [h, w],
    );
    if (tf.getBackend() === 'wasm') {
      // the vocabulary in blocks of 2048 (3 blocks, the last one short), as the Llama head passes them
      const blocks = transposedVocabBlocks(frozen);
      expect(blocks.map((b) => b.shape)).toEqual([
        [24, 2048],
        [24, 2048],
        [24, 904],
      ]);
      await compare(
        (hh) => linearCrossEntropy(hh!, frozen, targets, { chunkRows: 4, vocabBlocks: blocks }),
        (hh) => plain(hh!, frozen),
        [h],
      );
      tf.dispose(blocks);
    }
    tf.dispose([targets, logits, h, w, frozen]);
  });
});
