import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeEach, expect } from 'vitest';
import { maxRelativeError } from '@lora/tensor/testing';
import { configureKernels } from './configure';

/** Values in [-1, 1) from a fixed sequence (no generator state shared between tests). */
export function seq(shape: number[], seed = 1): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = s / 2 ** 31 - 1;
  }
  return tf.tensor(v, shape);
}

/** Runs `fn` with fused kernels off: the composite of tf ops, the oracle for the fused path. */
export function composite<T>(fn: () => T): T {
  configureKernels({ fused: false });
  try {
    return fn();
  } finally {
    configureKernels({});
  }
}

export async function expectClose(actual: tf.Tensor, expected: tf.Tensor | ArrayLike<number>, tol: number) {
  const e = expected instanceof tf.Tensor ? await expected.data() : expected;
  if (expected instanceof tf.Tensor) expect(actual.shape).toEqual(expected.shape);
  const err = maxRelativeError(await actual.data(), e);
  expect(err).toBeLessThan(tol);
}

/** The kernels `fn` ran (names, in order), from `tf.profile`. */
export async function kernelNames(fn: () => unknown): Promise<string[]> {
  const info = await tf.profile(async () => {
    const out = fn();
    tf.dispose(out as tf.TensorContainer);
  });
  return info.kernels.map((k) => k.name);
}

/** On webgpu the fused kernel must be what ran (a silent fallback would pass every parity test). */
export async function expectFusedOnWebgpu(backend: string, fn: () => unknown, kernel: string): Promise<void> {
  const names = await kernelNames(fn);
  if (backend === 'webgpu') expect(names).toContain(kernel);
  else expect(names.some((n) => n.startsWith('Lora'))).toBe(false);
}

interface ErrorTarget {
  addEventListener?(type: string, fn: (e: { error?: { message?: string } }) => void): void;
  removeEventListener?(type: string, fn: (e: { error?: { message?: string } }) => void): void;
}

/**
 * Fails a test in which the GPU device reported an error: a shader that does not compile or a bind
 * group that does not fit only prints a warning and drops the command buffer, and stale buffer
 * contents could then pass a comparison.
 */
export function failOnGpuErrors(): void {
  let errors: string[] = [];
  const listener = (e: { error?: { message?: string } }) => errors.push(e.error?.message ?? String(e));
  let device: ErrorTarget | null = null;
  beforeEach(() => {
    errors = [];
    device =
      tf.getBackend() === 'webgpu' ? ((tf.backend() as unknown as { device: ErrorTarget }).device ?? null) : null;
    device?.addEventListener?.('uncapturederror', listener);
  });
  afterEach(async () => {
    if (device) {
      // errors arrive asynchronously: let the queue drain first
      await tf.tidy(() => tf.zeros([1])).data();
      device.removeEventListener?.('uncapturederror', listener);
    }
    expect(errors).toEqual([]);
  });
}

/** The shader keys of the webgpu programs `fn` ran (tfjs's and ours). */
export function programsRun(fn: () => unknown): string[] {
  const backend = tf.backend() as unknown as {
    runWebGPUProgram: (p: { shaderKey: string }, ...r: unknown[]) => unknown;
  };
  const run = backend.runWebGPUProgram;
  const keys: string[] = [];
  backend.runWebGPUProgram = function (this: unknown, p: { shaderKey: string }, ...rest: unknown[]) {
    keys.push(p.shaderKey);
    return run.call(this, p, ...rest);
  };
  try {
    tf.dispose(fn() as tf.TensorContainer);
  } finally {
    backend.runWebGPUProgram = run;
  }
  return keys;
}
