import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import {
  BackendUnavailableError,
  assertNoLeaks,
  describeAdapter,
  getBackendInfo,
  initBackend,
  listBackends,
  TensorLeakError,
} from '@lora/tensor';

describe('initBackend', () => {
  it('starts cpu, reports it, and registers gradients', async () => {
    const info = await initBackend('cpu');
    expect(info).toEqual({ name: 'cpu', adapter: 'JavaScript (tfjs-backend-cpu)', software: false, platform: 'node' });
    expect(getBackendInfo()).toEqual(info);
    const g = tf.grad((x: tf.Tensor) => tf.sum(tf.square(x)))(tf.tensor1d([1, 2]));
    expect(Array.from(await g.data())).toEqual([2, 4]);
  });

  it("picks a backend in 'auto' mode in the documented Node order, never a software GPU", async () => {
    const rows = await listBackends();
    const info = await initBackend('auto');
    const firstUsable = rows.find((r) => r.available && !(r.name === 'webgpu' && r.software));
    expect(info.name).toBe(firstUsable?.name);
    expect(tf.getBackend()).toBe(info.name);
  });

  it('lists every backend with an adapter or a reason and a hint', async () => {
    const rows = await listBackends();
    expect(rows.map((r) => r.name)).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
    for (const r of rows) {
      if (r.available) expect(r.adapter).toBeTruthy();
      else expect(r.reason && r.hint).toBeTruthy();
    }
    expect(rows.find((r) => r.name === 'cpu')?.available).toBe(true);
  });

  it('fails with what to do for an unknown name or an unavailable backend', async () => {
    await expect(initBackend('webgl' as 'cpu')).rejects.toThrow(
      /backend 'webgl' is not available: unknown backend name. Use one of cpu, wasm, webgpu, tensorflow or 'auto'/,
    );
    // Dawn's null backend gives no adapter that can compute: the error must say how to get one.
    const err = await initBackend('webgpu', { webgpu: { dawnOptions: ['backend=null-not-a-backend'] } }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BackendUnavailableError);
    expect((err as BackendUnavailableError).hint).toMatch(/Vulkan driver|backend=opengles/);
  });
});

describe('describeAdapter', () => {
  it('flags software adapters by the fallback bit or by name', () => {
    expect(describeAdapter({ info: { vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H200' } })).toEqual(
      { adapter: 'NVIDIA H200, nvidia hopper', software: false },
    );
    expect(describeAdapter({ info: { description: 'llvmpipe (LLVM 15.0.6, 256 bits)' } }).software).toBe(true);
    expect(describeAdapter({ info: { vendor: 'google', architecture: 'swiftshader' } }).software).toBe(true);
    expect(describeAdapter({ isFallbackAdapter: true, info: {} }).software).toBe(true);
  });
});

describe('assertNoLeaks', () => {
  it('passes when only the result survives, and names the difference otherwise', async () => {
    await initBackend('cpu');
    const a = tf.tensor1d([1, 2]);
    const y = assertNoLeaks(() => tf.tidy(() => tf.add(tf.mul(a, 2), 1)));
    y.dispose();
    const leaky = () => {
      tf.mul(a, 3); // never disposed
      return tf.add(a, 1);
    };
    expect(() => assertNoLeaks(leaky, 'leaky')).toThrow(TensorLeakError);
    expect(() => assertNoLeaks(leaky, 'leaky')).toThrow(
      /leaky \(returned 1 tensor\(s\)\): tf.memory\(\).numTensors went from \d+ to \d+ \(\+1\)/,
    );
    await expect(assertNoLeaks(async () => ({ t: tf.tidy(() => tf.neg(a)) }), 'async')).resolves.toBeTruthy();
    tf.disposeVariables();
  });
});
