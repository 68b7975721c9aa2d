import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { type AdamWHyper, adamwScalars, adamwUpdate, adamwUpdateInPlace } from './adamw';
import { expectClose, expectFusedOnWebgpu, failOnGpuErrors, seq } from './kernels.test-util';

/** float64 torch.optim.AdamW, single-tensor path. */
function reference(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, h: AdamWHyper) {
  const n = p.length;
  const out = { p: new Float64Array(n), m: new Float64Array(n), v: new Float64Array(n) };
  for (let i = 0; i < n; i++) {
    const mi = (m[i] as number) + ((g[i] as number) - (m[i] as number)) * (1 - h.beta1);
    const vi = (v[i] as number) * h.beta2 + (g[i] as number) ** 2 * (1 - h.beta2);
    const denom = Math.sqrt(vi) / Math.sqrt(1 - h.beta2 ** h.step) + h.eps;
    out.p[i] = (p[i] as number) * (1 - h.lr * h.weightDecay) - (mi / denom) * (h.lr / (1 - h.beta1 ** h.step));
    out.m[i] = mi;
    out.v[i] = vi;
  }
  return out;
}

await describeEachBackend('adamwUpdate', (backend) => {
  failOnGpuErrors();
  it('matches float64 AdamW over three steps', async () => {
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 0 };
    let p = seq([5, 7], 71);
    let mv = tf.zeros([2, 5, 7]);
    let rp = (await p.data()) as Float32Array;
    let rm = new Float32Array(35);
    let rv = new Float32Array(35);
    for (let step = 1; step <= 3; step++) {
      const g = seq([5, 7], 73 + step);
      const hyper = { ...h, step };
      const next = assertNoLeaks(() => adamwUpdate(p, g, mv, hyper));
      const want = reference(rp, (await g.data()) as Float32Array, rm, rv, hyper);
      await expectClose(next.param, want.p, 1e-6);
      const moments = (await next.moments.data()) as Float32Array;
      expect(Math.max(...Array.from(want.m, (w, i) => Math.abs(w - (moments[i] as number))))).toBeLessThan(1e-7);
      expect(Math.max(...Array.from(want.v, (w, i) => Math.abs(w - (moments[35 + i] as number))))).toBeLessThan(1e-9);
      rp = Float32Array.from(want.p);
      rm = Float32Array.from(want.m);
      rv = Float32Array.from(want.v);
      tf.dispose([p, mv, g]);
      p = next.param;
      mv = next.moments;
    }
    const g = seq([5, 7], 79);
    await expectFusedOnWebgpu(backend.name, () => adamwUpdate(p, g, mv, { ...h, step: 4 }), 'LoraAdamWParam');
    tf.dispose([p, mv, g]);
  });
});

await describeEachBackend('adamwUpdateInPlace', (backend) => {
  failOnGpuErrors();
  it('writes what adamwUpdate returns into the parameter and the moments (webgpu), or declines', async () => {
    const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 2 };
    // a variable shares its initial value's data: that tensor goes, so that the buffers are the variables' own
    const own = (t: tf.Tensor) => {
      const v = tf.variable(t);
      t.dispose();
      return v;
    };
    const p = own(seq([6, 5], 131));
    const mv = own(tf.tidy(() => tf.abs(seq([2, 6, 5], 137))));
    const g = seq([6, 5], 139);
    const want = adamwUpdate(p, g, mv, h);
    const scalars = adamwScalars(h);
    const before = tf.memory().numTensors;
    const done = adamwUpdateInPlace(p, g, mv, h, scalars);
    expect(tf.memory().numTensors).toBe(before);
    expect(done).toBe(backend.name === 'webgpu');
    if (done) {
      await expectClose(p, want.param, 1e-6);
      await expectClose(mv, want.moments, 1e-6);
    }
    // a parameter sharing its data with another tensor is left alone
    const view = tf.reshape(p, [30]);
    const snapshot = await p.data();
    expect(adamwUpdateInPlace(p, g, mv, h, scalars)).toBe(false);
    await expectClose(p, snapshot, 0 + 1e-12);
    tf.dispose([p, mv, g, want.param, want.moments, scalars, view]);
  });
});

describe('adamwUpdate input checks', () => {
  it('names the shapes', () => {
    const p = tf.zeros([2, 3]);
    const mv = tf.zeros([2, 3]);
    const h = { lr: 1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, step: 1 };
    expect(() => adamwUpdate(p, p, mv, h)).toThrow(/moments \[2, 3\] must be \[2, 2, 3\]/);
    tf.dispose([p, mv]);
  });
});
