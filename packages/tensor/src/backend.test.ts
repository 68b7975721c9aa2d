import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { chooseAuto } from './backend';
import {
  BackendUnavailableError,
  assertNoLeaks,
  autoOrder,
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

  it("lists every backend with an adapter or a reason and a hint, in 'auto''s order", async () => {
    const rows = await listBackends();
    const tfGpu = rows.find((r) => r.name === 'tensorflow')?.adapter?.includes('CUDA') === true;
    expect(rows.map((r) => r.name)).toEqual(autoOrder({ tensorflowGpu: tfGpu }, 'node'));
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

describe("'auto''s order (probes stood in for: nothing here depends on what is installed)", () => {
  type Name = 'cpu' | 'wasm' | 'webgpu' | 'tensorflow';
  /** A machine: which backends start, whether TensorFlow sees a CUDA GPU, whether the adapter is software. */
  async function pick(present: Name[], machine: { tensorflowGpu?: boolean; failsToStart?: Name[] } = {}) {
    const probed: Name[] = [];
    const chosen = await chooseAuto(
      async (name) => {
        probed.push(name);
        return present.includes(name)
          ? {
              ok: true as const,
              adapter: name,
              software: false,
              gpu: name === 'tensorflow' ? machine.tensorflowGpu === true : undefined,
              activate: async () => undefined,
            }
          : { ok: false as const, reason: `${name} absent`, hint: '' };
      },
      async (name) => {
        if (machine.failsToStart?.includes(name)) throw new Error(`${name} would not start`);
        return { name, adapter: name, software: false, platform: 'node' as const };
      },
      'node',
    );
    return { chosen: 'name' in chosen ? chosen.name : chosen.skipped, probed };
  }

  it('puts TensorFlow on CUDA first, then a hardware webgpu adapter, then TensorFlow on the CPU, wasm, cpu', async () => {
    expect(autoOrder({ tensorflowGpu: true }, 'node')).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
    expect(autoOrder({ tensorflowGpu: false }, 'node')).toEqual(['webgpu', 'tensorflow', 'wasm', 'cpu']);
    expect(autoOrder({}, 'browser')).toEqual(['webgpu', 'wasm', 'cpu']);
    const all: Name[] = ['cpu', 'wasm', 'webgpu', 'tensorflow'];
    expect((await pick(all, { tensorflowGpu: true })).chosen).toBe('tensorflow');
    // a CPU-only tfjs-node must not win over a real GPU
    expect((await pick(all, { tensorflowGpu: false })).chosen).toBe('webgpu');
    expect((await pick(['cpu', 'wasm', 'tensorflow'])).chosen).toBe('tensorflow');
    expect((await pick(['cpu', 'wasm'])).chosen).toBe('wasm');
    expect((await pick(['cpu'])).chosen).toBe('cpu');
  });

  it('probes each backend once, and goes on when one fails to start', async () => {
    const { chosen, probed } = await pick(['cpu', 'wasm', 'webgpu', 'tensorflow'], { failsToStart: ['webgpu'] });
    expect(chosen).toBe('tensorflow');
    expect(probed).toEqual(['tensorflow', 'webgpu']);
    const none = await pick([]);
    expect(none.chosen).toEqual([
      'webgpu: webgpu absent',
      'tensorflow: tensorflow absent',
      'wasm: wasm absent',
      'cpu: cpu absent',
    ]);
    expect(none.probed).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
  });
});
