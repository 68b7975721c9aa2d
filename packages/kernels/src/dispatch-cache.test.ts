import * as tf from '@tensorflow/tfjs-core';
import { afterAll, expect, it } from 'vitest';
import { describeEachBackend } from '@lora/tensor/testing';
import { configureKernels } from './configure';
import { dispatchCacheStats } from '@lora/tensor';
import { expectClose, failOnGpuErrors, seq } from './kernels.test-util';
import { rmsNorm } from './rms-norm';

await describeEachBackend('dispatch cache', (backend) => {
  failOnGpuErrors();
  afterAll(() => {
    configureKernels({});
  });
  // a small training-like step: products, elementwise ops with scalars, a fused kernel, a reduction
  const step = (x: tf.Tensor, w: tf.Tensor, g: tf.Tensor) =>
    tf.tidy(() => tf.sum(tf.mul(rmsNorm(tf.matMul(x, w, false, true), g, 1e-6), 0.5), 0));

  it.runIf(backend.name === 'webgpu')(
    'reuses bind groups and uniform buffers from the second run on, with the same results',
    async () => {
      const x = seq([33, 40], 107);
      const w = seq([24, 40], 109);
      const g = tf.add(seq([24], 113), 1);
      configureKernels({ dispatchCache: false });
      const plain = step(x, w, g);
      configureKernels({ dispatchCache: true });
      // as in training: each run's result read and freed before the next; tfjs's buffer pool then
      // hands the same buffers out again, so the later runs find their bind groups
      let before = { ...dispatchCacheStats };
      for (let run = 0; run < 3; run++) {
        before = { ...dispatchCacheStats };
        const y = step(x, w, g);
        await expectClose(y, plain, 1e-12);
        y.dispose();
      }
      expect(dispatchCacheStats.uniformMisses).toBe(before.uniformMisses);
      expect(dispatchCacheStats.bindGroupHits).toBeGreaterThan(before.bindGroupHits);
      expect(dispatchCacheStats.bindGroupMisses).toBe(before.bindGroupMisses);
      // a different shape makes new uniforms and still computes right
      const x2 = seq([7, 40], 127);
      const cached = step(x2, w, g);
      configureKernels({ dispatchCache: false });
      const uncached = step(x2, w, g);
      await expectClose(cached, uncached, 1e-12);
      tf.dispose([cached, uncached]);
      tf.dispose([x, w, g, plain, x2]);
    },
  );
});
