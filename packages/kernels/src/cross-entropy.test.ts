import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { softmaxCrossEntropy } from './cross-entropy';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';

await describeEachBackend('softmaxCrossEntropy', (backend) => {
  failOnGpuErrors();
  // 300 classes: more than one workgroup's worth of threads per row; −100 and an out-of-range target
  it('matches float64 and the composite gradient, ignoring −100', async () => {
    const [b, t, c] = [2, 5, 300];
    const logits = tf.mul(seq([b, t, c], 59), 8);
    const raw = [3, -100, 299, 0, 17, 5, -100, 300, 42, 1];
    const targets = tf.tensor2d(raw, [b, t], 'int32');
    const loss = assertNoLeaks(() => softmaxCrossEntropy(logits, targets));
    expect(loss.shape).toEqual([]);
    const lv = (await logits.data()) as Float32Array;
    let total = 0;
    let count = 0;
    raw.forEach((target, row) => {
      if (target === -100) return;
      count++;
      const z = Array.from(lv.subarray(row * c, row * c + c));
      const top = Math.max(...z);
      const lse = top + Math.log(z.reduce((s, v) => s + Math.exp(v - top), 0));
      if (target >= 0 && target < c) total += lse - (z[target] as number);
    });
    await expectClose(loss, [total / count], 1e-6);
    const f = (x: tf.Tensor) => tf.mul(softmaxCrossEntropy(x, targets), 3);
    const grad = assertNoLeaks(() => tf.grad(f)(logits));
    const ref = composite(() => tf.grad(f)(logits));
    await expectClose(grad, ref, 1e-5);
    await expectFusedOnWebgpu(backend.name, () => tf.grad(f)(logits), 'LoraSoftmaxCrossEntropyGrad');
    tf.dispose([logits, targets, loss, grad, ref]);
  });

  it('is NaN when no target counts, as torch', async () => {
    const logits = seq([2, 3], 61);
    const targets = tf.tensor1d([-100, -100], 'int32');
    const loss = softmaxCrossEntropy(logits, targets);
    expect(Number.isNaN((await loss.data())[0])).toBe(true);
    tf.dispose([logits, targets, loss]);
  });

  it("keeps 'sum' and 'none' on the composite", async () => {
    const logits = seq([3, 4], 67);
    const targets = tf.tensor1d([1, -100, 3], 'int32');
    const none = softmaxCrossEntropy(logits, targets, { reduction: 'none' });
    const sum = softmaxCrossEntropy(logits, targets, { reduction: 'sum' });
    expect(none.shape).toEqual([3]);
    await expectClose(sum, [Array.from(await none.data()).reduce((a, v) => a + v, 0)], 1e-6);
    tf.dispose([logits, targets, none, sum]);
  });
});

describe('softmaxCrossEntropy input checks', () => {
  it('names the shapes and the dtype', () => {
    const logits = tf.zeros([2, 3]);
    const bad = tf.zeros([3], 'int32');
    const float = tf.zeros([2]);
    expect(() => softmaxCrossEntropy(logits, bad)).toThrow(/logits \[2, 3\] and targets \[3\]/);
    expect(() => softmaxCrossEntropy(logits, float)).toThrow(/targets must be int32, got float32/);
    tf.dispose([logits, bad, float]);
  });
});
