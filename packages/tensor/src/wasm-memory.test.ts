import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { WasmOutOfMemoryError, initBackend, memoryUsage } from '@lora/tensor';

// the start (loading and transforming tfjs-backend-wasm) under the hook's longer timeout: on a loaded machine it takes a minute
beforeAll(() => initBackend('wasm'));

it('wasm: a tensor larger than the heap can hold fails with WasmOutOfMemoryError, and the backend carries on', async () => {
  const before = tf.memory().numTensors;
  const small = tf.ones([64, 64]);
  // 1.1 G floats (4.4 GiB): tfjs would pass the size to a 32-bit malloc, which wraps it to 300 MiB
  const err = (() => {
    try {
      tf.tidy(() => tf.tile(small, [16 * 1024, 18]));
    } catch (e) {
      return e;
    }
    return null;
  })();
  expect(err).toBeInstanceOf(WasmOutOfMemoryError);
  const oom = err as WasmOutOfMemoryError;
  expect(oom.requestedBytes).toBe(64 * 64 * 16 * 1024 * 18 * 4);
  expect(oom.neededBytes).toBeGreaterThan(oom.limitBytes);
  expect(oom.message).toMatch(/out of memory: a tensor \(4608\.0 MiB\) did not fit .* limit is 4095\.9 MiB/);
  // nothing half-made is left, and the heap still works
  small.dispose();
  expect(tf.memory().numTensors).toBe(before);
  expect(Array.from(await tf.tidy(() => tf.add(tf.ones([3]), 1)).data())).toEqual([2, 2, 2]);
  const usage = memoryUsage();
  expect(usage.backend).toBe('wasm');
  expect(usage.wasmHeapBytes).toBeGreaterThan(0);
  expect(usage.wasmLiveBytes).toBeGreaterThanOrEqual(0);
  expect(usage.wasmPeakLiveBytes).toBeGreaterThanOrEqual(64 * 64 * 4);
});
