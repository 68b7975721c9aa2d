import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { Module, ModuleList, TransposedLinear, manualSeed, transposedLinear, withoutInit } from '@lora/nn';

// x [2, 3, 4], W [4, 5] (in, out), b [5] and an upstream gradient g [2, 3, 5], filled with small exact values
const X = Array.from({ length: 24 }, (_, i) => ((i * 7) % 11) / 4 - 1);
const W = Array.from({ length: 20 }, (_, i) => ((i * 5) % 13) / 8 - 0.75);
const B = [0.5, -1, 0.25, 0, 2];
const G = Array.from({ length: 30 }, (_, i) => ((i * 3) % 7) - 3);

/** Row-major products, worked out in float64 as the closed form. */
function closedForm() {
  const rows = 6;
  const y = new Float64Array(rows * 5);
  const dW = new Float64Array(20);
  const db = new Float64Array(5);
  const dx = new Float64Array(rows * 4);
  for (let n = 0; n < rows; n++)
    for (let o = 0; o < 5; o++) {
      let s = B[o] as number;
      for (let i = 0; i < 4; i++) s += (X[n * 4 + i] as number) * (W[i * 5 + o] as number);
      y[n * 5 + o] = s;
      const g = G[n * 5 + o] as number;
      db[o] = (db[o] as number) + g;
      for (let i = 0; i < 4; i++) {
        dW[i * 5 + o] = (dW[i * 5 + o] as number) + (X[n * 4 + i] as number) * g; // dW = xᵀ·g
        dx[n * 4 + i] = (dx[n * 4 + i] as number) + g * (W[i * 5 + o] as number); // dx = g·Wᵀ
      }
    }
  return { y, dW, db, dx };
}

function layer(): TransposedLinear {
  const lin = withoutInit(() => new TransposedLinear(5, 4));
  const w = tf.tensor2d(W, [4, 5]);
  const b = tf.tensor1d(B);
  lin.loadStateDict({ weight: w, bias: b });
  tf.dispose([w, b]);
  return lin;
}

await describeEachBackend('TransposedLinear (transformers Conv1D)', () => {
  it('computes x·W + b with the weight stored [in, out], on inputs of any rank', async () => {
    const lin = layer();
    expect([lin.inFeatures, lin.outFeatures, lin.nx, lin.nf]).toEqual([4, 5, 4, 5]);
    const x = tf.tensor3d(X, [2, 3, 4]);
    const before = tf.memory().numTensors;
    const y = lin.call(x) as tf.Tensor;
    expect(y.shape).toEqual([2, 3, 5]);
    const { y: want } = closedForm();
    expect(maxRelativeError(await y.data(), want)).toBeLessThan(1e-6);
    // a 2-D input gives the same rows; the functional form is the same computation
    const x2 = tf.reshape(x, [6, 4]);
    const y2 = lin.call(x2) as tf.Tensor;
    const y3 = transposedLinear(x2, lin.weight, lin.bias);
    expect(y2.shape).toEqual([6, 5]);
    expect(Array.from(await y2.data())).toEqual(Array.from(await y.data()));
    expect(Array.from(await y3.data())).toEqual(Array.from(await y.data()));
    tf.dispose([y, x2, y2, y3]);
    expect(tf.memory().numTensors).toBe(before);
    expect(() => lin.call(tf.ones([2, 5]))).toThrow(
      /input's last dimension is 5 but the weight expects 4 \(weight shape \[4, 5\], stored \[in, out\]\)/,
    );
    x.dispose();
    lin.dispose();
  });

  it('gives the gradients dW = xᵀ·g, db = Σg, dx = g·Wᵀ', async () => {
    const lin = layer();
    const x = tf.tensor3d(X, [2, 3, 4]);
    const g = tf.tensor3d(G, [2, 3, 5]);
    const before = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.mul(lin.call(x) as tf.Tensor, g)) as tf.Scalar,
      [lin.weight, lin.bias],
    );
    const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(lin.call(input) as tf.Tensor, g)))(x);
    const want = closedForm();
    expect(grads[lin.weight.name]!.shape).toEqual([4, 5]);
    expect(maxRelativeError(await grads[lin.weight.name]!.data(), want.dW)).toBeLessThan(1e-6);
    expect(maxRelativeError(await grads[lin.bias.name]!.data(), want.db)).toBeLessThan(1e-6);
    expect(maxRelativeError(await dx.data(), want.dx)).toBeLessThan(1e-6);
    tf.dispose([value, dx, ...Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, g]);
    lin.dispose();
  });
});

it("keeps transformers' state-dict names and layout, and initialises N(0, 0.02²) with a zero bias", async () => {
  class Gpt2Attn extends Module {
    c_attn = this.registerModule('c_attn', new TransposedLinear(24, 8));
    c_proj = this.registerModule('c_proj', new TransposedLinear(8, 8));
    forward(x: tf.Tensor): tf.Tensor {
      return this.c_proj.call(tf.slice(this.c_attn.call(x) as tf.Tensor, [0, 0], [-1, 8]));
    }
  }
  manualSeed(0);
  const before = tf.memory().numTensors;
  const m = new ModuleList([new Gpt2Attn()]);
  const sd = m.stateDict();
  expect(Object.fromEntries(Object.entries(sd).map(([k, t]) => [k, t.shape]))).toEqual({
    '0.c_attn.weight': [8, 24],
    '0.c_attn.bias': [24],
    '0.c_proj.weight': [8, 8],
    '0.c_proj.bias': [8],
  });
  const w = Array.from(await (sd['0.c_attn.weight'] as tf.Tensor).data());
  const mean = w.reduce((a, b) => a + b, 0) / w.length;
  const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
  expect(Math.abs(mean)).toBeLessThan(0.005);
  expect(std).toBeGreaterThan(0.015);
  expect(std).toBeLessThan(0.025);
  expect(Array.from(await (sd['0.c_attn.bias'] as tf.Tensor).data())).toEqual(new Array(24).fill(0));
  expect(() => new TransposedLinear(0, 4)).toThrow(
    'TransposedLinear: nf (output features) must be a positive integer, got 0',
  );
  m.dispose();
  expect(tf.memory().numTensors).toBe(before);
});
