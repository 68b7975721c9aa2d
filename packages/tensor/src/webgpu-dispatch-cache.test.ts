import * as tf from '@tensorflow/tfjs-core';
import { afterAll, expect, it } from 'vitest';
import { describeEachBackend } from './testing';
import type { WebGPUBackendLike, WebGPUProgramLike } from './webgpu-program';
import { dispatchCacheStats, setDispatchCache } from './webgpu-dispatch-cache';

/** y = 2·x + c, a program of the kind @lora/linalg and @lora/intruders run without @lora/kernels. */
function scaleProgram(n: number): WebGPUProgramLike {
  return {
    outputShape: [n],
    shaderKey: 'TensorTestScaleAdd',
    dispatchLayout: { x: [0] },
    dispatch: [Math.ceil(n / 64), 1, 1],
    workgroupSize: [64, 1, 1],
    variableNames: ['X'],
    uniforms: 'c : f32,',
    size: true,
    getUserCode: () => `
      fn main(index : i32) {
        if (index < uniforms.size) { setOutputAtIndex(index, 2.0 * getXByOutputIndex(index) + uniforms.c); }
      }`,
  } as WebGPUProgramLike;
}

await describeEachBackend('webgpu dispatch cache', (backend) => {
  afterAll(() => setDispatchCache(true));
  const values = (n: number, seed: number) => tf.tensor1d(Array.from({ length: n }, (_, i) => Math.sin(seed + i)));

  // tfjs's own ops and a program run through runWebGPUProgram, with nothing but initBackend before
  const work = (x: tf.Tensor, c: number) =>
    tf.tidy(() => {
      const b = tf.backend() as unknown as WebGPUBackendLike;
      const info = b.runWebGPUProgram(scaleProgram(x.size), [x], 'float32', [{ type: 'float32', data: [c] }]);
      const y = tf.engine().makeTensorFromTensorInfo(info);
      return tf.sum(tf.mul(tf.exp(tf.mul(y, 0.1)), x));
    });

  it.runIf(backend.name === 'webgpu')(
    'is installed by initBackend: repeated dispatches reuse bind groups and uniforms, with the same results',
    async () => {
      const x = values(300, 1);
      setDispatchCache(false);
      const plain = work(x, 0.5);
      const plainValue = (await plain.data())[0] as number;
      setDispatchCache(true);
      let before = { ...dispatchCacheStats };
      for (let run = 0; run < 3; run++) {
        before = { ...dispatchCacheStats };
        const y = work(x, 0.5);
        expect((await y.data())[0]).toBe(plainValue);
        y.dispose();
      }
      // the last run made nothing new: every dispatch found its uniform buffer and bind group
      expect(dispatchCacheStats.bindGroupHits).toBeGreaterThan(before.bindGroupHits);
      expect(dispatchCacheStats.bindGroupMisses).toBe(before.bindGroupMisses);
      expect(dispatchCacheStats.uniformMisses).toBe(before.uniformMisses);
      // another uniform value is another buffer, and its own result
      const other = work(x, -1.25);
      setDispatchCache(false);
      const otherPlain = work(x, -1.25);
      expect((await other.data())[0]).toBe((await otherPlain.data())[0]);
      expect(dispatchCacheStats.uniformMisses).toBeGreaterThan(before.uniformMisses);
      tf.dispose([x, plain, other, otherPlain]);
    },
  );

  it.runIf(backend.name === 'webgpu')(
    'uploads host values into pooled buffers without a staging buffer each, with the same values',
    async () => {
      const device = (tf.backend() as unknown as { device: { createBuffer: (...a: unknown[]) => unknown } }).device;
      const own = device.createBuffer;
      let created = 0;
      device.createBuffer = function (...args: unknown[]) {
        created++;
        return own.apply(this, args);
      };
      try {
        const run = async (cached: boolean) => {
          setDispatchCache(cached);
          const out: number[][] = [];
          for (let i = 0; i < 3; i++) {
            // float32, int32 and bool host tensors of one size, each uploaded by its first use
            const f = tf.tensor1d([1.5, -2, 3.25, i]);
            const n = tf.tensor1d([7, -8, 9, i], 'int32');
            const m = tf.tensor1d([true, false, true, i % 2 === 0], 'bool');
            const before = created;
            const y = tf.tidy(() => tf.add(tf.where(m, f, tf.neg(f)), tf.cast(n, 'float32')));
            out.push([...((await y.data()) as Float32Array), created - before]);
            tf.dispose([f, n, m, y]);
          }
          return out;
        };
        const plain = await run(false);
        const cached = await run(true);
        for (let i = 0; i < 3; i++) expect(cached[i]?.slice(0, 4)).toEqual(plain[i]?.slice(0, 4));
        // tfjs's path makes a staging buffer per upload (three here); the written path none once the pool has buffers
        expect(plain[2]?.[4]).toBeGreaterThanOrEqual(3);
        expect(cached[2]?.[4]).toBe(0);
      } finally {
        device.createBuffer = own;
        setDispatchCache(true);
      }
    },
  );

  it.runIf(backend.name === 'webgpu')('is off with setDispatchCache(false): no hits, no misses', async () => {
    const x = values(64, 2);
    setDispatchCache(false);
    const before = { ...dispatchCacheStats };
    const y = work(x, 1);
    await y.data();
    expect(dispatchCacheStats).toEqual(before);
    setDispatchCache(true);
    tf.dispose([x, y]);
  });
});
