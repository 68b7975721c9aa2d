import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { Generator, assertNoLeaks, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';

// Reference results come from float64 loops here, not from another backend.
function matmul64(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p] as number;
      for (let j = 0; j < n; j++) out[i * n + j] = (out[i * n + j] as number) + av * (b[p * n + j] as number);
    }
  return out;
}

await describeEachBackend('backend suite', (backend) => {
  it('reports the backend it started', () => {
    expect(tf.getBackend()).toBe(backend.name);
    expect(backend.info().adapter.length).toBeGreaterThan(0);
  });

  it('matmul of 96x80 by 80x72 matches a float64 reference to 1e-5', async () => {
    const g = new Generator(1);
    const a = new Float32Array(96 * 80);
    const b = new Float32Array(80 * 72);
    g.fillUniform(a, -1, 1);
    g.fillUniform(b, -1, 1);
    const before = tf.memory().numTensors;
    const y = tf.tidy(() => tf.matMul(tf.tensor2d(a, [96, 80]), tf.tensor2d(b, [80, 72])));
    const got = await y.data();
    y.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(maxRelativeError(got, matmul64(a, b, 96, 80, 72))).toBeLessThan(1e-5);
  });

  it('computes LoRA gradients that match the closed form', async () => {
    // loss = sum((x A^T B^T) * s); dL/dA = s * B^T 1 x summed, dL/dB = s * 1 (x A^T) summed.
    const g = new Generator(2);
    const [n, din, dout, r, s] = [5, 7, 6, 3, 0.5];
    const x = g.rand([n, din], -1, 1);
    const a = g.rand([r, din], -1, 1);
    const b = g.rand([dout, r], -1, 1);
    const grads = tf.grads((aa: tf.Tensor, bb: tf.Tensor) =>
      tf.mul(tf.sum(tf.matMul(tf.matMul(x, aa, false, true), bb, false, true)), s),
    )([a, b]);
    const [ga, gb] = await Promise.all(grads.map((t) => t.data()));
    const [xv, av, bv] = await Promise.all([x.data(), a.data(), b.data()]);
    const xsum = new Float64Array(din);
    for (let i = 0; i < n; i++) for (let j = 0; j < din; j++) xsum[j] = (xsum[j] as number) + (xv[i * din + j] as number);
    const bcol = new Float64Array(r);
    for (let o = 0; o < dout; o++) for (let k = 0; k < r; k++) bcol[k] = (bcol[k] as number) + (bv[o * r + k] as number);
    const wantA = new Float64Array(r * din).map((_, idx) => s * (bcol[Math.floor(idx / din)] as number) * (xsum[idx % din] as number));
    const axsum = new Float64Array(r);
    for (let k = 0; k < r; k++) for (let j = 0; j < din; j++) axsum[k] = (axsum[k] as number) + (av[k * din + j] as number) * (xsum[j] as number);
    const wantB = new Float64Array(dout * r).map((_, idx) => s * (axsum[idx % r] as number));
    expect(maxRelativeError(ga as Float32Array, wantA)).toBeLessThan(1e-5);
    expect(maxRelativeError(gb as Float32Array, wantB)).toBeLessThan(1e-5);
    tf.dispose([x, a, b, ...grads]);
  });

  it('writes and reads safetensors from tensors on this backend, without leaks', async () => {
    const t = new Generator(3).randn([4, 5]);
    const bytes = await assertNoLeaks(() => serializeSafetensors({ w: t }, { metadata: { format: 'pt' } }), 'serialize');
    const parsed = assertNoLeaks(() => parseSafetensors(bytes), 'parse');
    expect(Array.from(await parsed.tensors.w!.data())).toEqual(Array.from(await t.data()));
    tf.dispose([t, ...Object.values(parsed.tensors)]);
  });

  it('gives the same seeded random tensors as every other backend', async () => {
    const t = new Generator(123).rand([3, 3]);
    const v = await t.data();
    t.dispose();
    const again = new Generator(123).fillUniform(new Float32Array(9));
    expect(Array.from(v)).toEqual(Array.from(again));
  });
});
