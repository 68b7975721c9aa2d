import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { composite, expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';
import { swiglu } from './swiglu';

await describeEachBackend('swiglu', (backend) => {
  failOnGpuErrors();
  // 3·7·5 elements: not a multiple of 4 (scalar program); 2·8 is (vec4 program)
  for (const shape of [
    [3, 7, 5],
    [2, 8],
  ]) {
    it(`matches float64 and the composite's gradients for [${shape}]`, async () => {
      const gate = tf.mul(seq(shape, 11), 4);
      const up = seq(shape, 13);
      const dy = seq(shape, 17);
      const y = assertNoLeaks(() => swiglu(gate, up));
      const g = (await gate.data()) as Float32Array;
      const u = (await up.data()) as Float32Array;
      await expectClose(
        y,
        Array.from(g, (v, i) => (v / (1 + Math.exp(-v))) * (u[i] as number)),
        1e-6,
      );
      const f = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(swiglu(a, b), dy));
      const grads = assertNoLeaks(() => tf.grads(f)([gate, up]));
      const ref = composite(() => tf.grads(f)([gate, up]));
      await expectClose(grads[0] as tf.Tensor, ref[0] as tf.Tensor, 1e-5);
      await expectClose(grads[1] as tf.Tensor, ref[1] as tf.Tensor, 1e-5);
      await expectFusedOnWebgpu(backend.name, () => tf.grads(f)([gate, up]), 'LoraSwiGLUGradGate');
      tf.dispose([gate, up, dy, y, ...grads, ...ref]);
    });
  }
});

describe('swiglu input checks', () => {
  it('names both shapes when they differ', () => {
    const a = tf.zeros([2, 4]);
    const b = tf.zeros([2, 3]);
    expect(() => swiglu(a, b)).toThrow(/gate \[2, 4\] and up \[2, 3\] must have the same shape/);
    tf.dispose([a, b]);
  });
});
