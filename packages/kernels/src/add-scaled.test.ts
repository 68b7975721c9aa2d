import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { addScaled } from './add-scaled';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';

await describeEachBackend('addScaled', (backend) => {
  failOnGpuErrors();
  for (const shape of [
    [3, 5],
    [4, 8],
  ]) {
    it(`is a + b·s with the composite's gradients for [${shape}]`, async () => {
      const a = seq(shape, 149);
      const b = seq(shape, 151);
      const dy = seq(shape, 157);
      const y = assertNoLeaks(() => addScaled(a, b, 2.5));
      const [av, bv] = (await Promise.all([a.data(), b.data()])) as Float32Array[];
      await expectClose(
        y,
        Array.from(av as Float32Array, (v, i) => v + ((bv as Float32Array)[i] as number) * 2.5),
        1e-7,
      );
      const f = (x: tf.Tensor, z: tf.Tensor) => tf.sum(tf.mul(addScaled(x, z, 2.5), dy));
      const g = assertNoLeaks(() => tf.grads(f)([a, b]));
      const ref = composite(() => tf.grads(f)([a, b]));
      await expectClose(g[0] as tf.Tensor, ref[0] as tf.Tensor, 1e-6);
      await expectClose(g[1] as tf.Tensor, ref[1] as tf.Tensor, 1e-6);
      await expectFusedOnWebgpu(backend.name, () => tf.grads(f)([a, b]), 'LoraScale');
      tf.dispose([a, b, dy, y, ...g, ...ref]);
    });
  }
});

describe('addScaled input checks', () => {
  it('names both shapes', () => {
    const a = tf.zeros([2]);
    const b = tf.zeros([3]);
    expect(() => addScaled(a, b, 1)).toThrow(/a \[2\] and b \[3\] must have the same shape/);
    tf.dispose([a, b]);
  });
});
