import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { gatheredDelta, groupedDelta, route } from './routed-delta';

/** Values in [-1, 1) from a fixed sequence. */
function seq(shape: number[], seed: number, scale = 1): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    v[i] = (s / 2 ** 31 - 1) * scale;
  }
  return tf.tensor(v, shape);
}

const T = 9;
const IN = 7;
const OUT = 5;
const E = 6;
const R = 3;
const K = 2;
const TEMP = 0.7;
const SCALES = [2, 0.5, 1, 3, 1.5, 4];

/**
 * PEFT's routed delta in float64 from the values: sim = |x·Pᵀ|, −∞ outside each row's top k, a
 * softmax over all E at the temperature, every expert's s·B·A·x weighted by its coefficient.
 */
async function peftReference(x: tf.Tensor, p: tf.Tensor, a: tf.Tensor[], b: tf.Tensor[]) {
  const [xv, pv] = (await Promise.all([x.data(), p.data()])) as Float32Array[];
  const av = (await Promise.all(a.map((t) => t.data()))) as Float32Array[];
  const bv = (await Promise.all(b.map((t) => t.data()))) as Float32Array[];
  const out = new Float64Array(T * OUT);
  const coeff = new Float64Array(T * E);
  for (let t = 0; t < T; t++) {
    const sim = Array.from({ length: E }, (_, e) => {
      let s = 0;
      for (let f = 0; f < IN; f++) s += xv![t * IN + f]! * pv![e * IN + f]!;
      return Math.abs(s);
    });
    const top = [...sim.keys()].sort((i, j) => sim[j]! - sim[i]!).slice(0, K);
    const scores = sim.map((v, e) => (top.includes(e) ? v / TEMP : Number.NEGATIVE_INFINITY));
    const max = Math.max(...scores);
    const ex = scores.map((v) => Math.exp(v - max));
    const z = ex.reduce((u, v) => u + v, 0);
    for (let e = 0; e < E; e++) {
      const c = ex[e]! / z;
      coeff[t * E + e] = c;
      for (let o = 0; o < OUT; o++) {
        let y = 0;
        for (let i = 0; i < R; i++) {
          let ax = 0;
          for (let f = 0; f < IN; f++) ax += av[e]![i * IN + f]! * xv![t * IN + f]!;
          y += bv[e]![o * R + i]! * ax;
        }
        out[t * OUT + o]! += c * SCALES[e]! * y;
      }
    }
  }
  return { out, coeff };
}

await describeEachBackend('routed delta', () => {
  const setup = () => {
    const x = seq([T, IN], 3) as tf.Tensor2D;
    // unit prototypes
    const raw = seq([E, IN], 5);
    const p = tf.tidy(() => tf.div(raw, tf.norm(raw, 'euclidean', 1, true))) as tf.Tensor2D;
    raw.dispose();
    const a = Array.from({ length: E }, (_, e) => seq([R, IN], 10 + e, 0.5));
    const b = Array.from({ length: E }, (_, e) => seq([OUT, R], 20 + e, 0.5));
    return { x, p, a, b };
  };

  it("grouped by expert (CPU backends) and gathered (the kernel's path) give PEFT's dense sum", async () => {
    const { x, p, a, b } = setup();
    const { out, coeff } = await peftReference(x, p, a, b);
    const routing = assertNoLeaks(() => route(x, p, K, TEMP));
    // PEFT's coefficients over all E: ours are its nonzero ones, in the order of the top-k indices
    const [idx, c] = await Promise.all([routing.indices.data(), routing.coefficients.data()]);
    for (let t = 0; t < T; t++)
      for (let j = 0; j < K; j++)
        expect(c[t * K + j]).toBeCloseTo(coeff[t * E + (idx[t * K + j] as number)] as number, 6);
    const experts = a.map((ai, e) => ({ a: ai, b: b[e] as tf.Tensor, scale: SCALES[e] as number }));
    if (['cpu', 'wasm', 'tensorflow'].includes(tf.getBackend())) {
      const grouped = assertNoLeaks(() => groupedDelta(x, routing, experts));
      expect(maxRelativeError(await grouped.data(), out)).toBeLessThan(1e-5);
      grouped.dispose();
    }
    const stacked = { a: tf.stack(a) as tf.Tensor3D, b: tf.stack(b) as tf.Tensor3D };
    const gathered = assertNoLeaks(() => gatheredDelta(x, routing, stacked, SCALES));
    expect(maxRelativeError(await gathered.data(), out)).toBeLessThan(1e-5);
    tf.dispose([x, p, ...a, ...b, routing.indices, routing.coefficients, stacked.a, stacked.b, gathered]);
  });

  it('is differentiable in the tokens, through the coefficients too, as PyTorch differentiates it', async () => {
    const { x, p, a, b } = setup();
    const w = seq([T, OUT], 31);
    const experts = a.map((ai, e) => ({ a: ai, b: b[e] as tf.Tensor, scale: SCALES[e] as number }));
    const cpu = ['cpu', 'wasm', 'tensorflow'].includes(tf.getBackend());
    const stacked = { a: tf.stack(a) as tf.Tensor3D, b: tf.stack(b) as tf.Tensor3D };
    const loss = (xx: tf.Tensor, path: 'grouped' | 'gathered') => {
      const routing = route(xx as tf.Tensor2D, p, K, TEMP);
      const d =
        path === 'grouped'
          ? groupedDelta(xx as tf.Tensor2D, routing, experts)
          : gatheredDelta(xx as tf.Tensor2D, routing, stacked, SCALES);
      return tf.sum(tf.mul(d, w));
    };
    const paths = cpu ? (['grouped', 'gathered'] as const) : (['gathered'] as const);
    const xv = (await x.data()) as Float32Array;
    for (const path of paths) {
      const g = assertNoLeaks(() => tf.grad((xx: tf.Tensor) => loss(xx, path))(x));
      const gv = (await g.data()) as Float32Array;
      // central differences of the float32 function, on entries whose token keeps its experts within ±h
      let compared = 0;
      for (const i of [0, 11, 30, 47, 62]) {
        const h = 1e-2;
        const at = async (d: number) => {
          const v = Float32Array.from(xv);
          v[i]! += d;
          const xt = tf.tensor2d(v, [T, IN]);
          const l = loss(xt, path);
          const r = route(xt, p, K, TEMP);
          const s = (await l.data())[0] as number;
          const experts = Array.from(await r.indices.data()).join();
          tf.dispose([xt, l, r.indices, r.coefficients]);
          return { s, experts };
        };
        const [plus, minus] = [await at(h), await at(-h)];
        if (plus.experts !== minus.experts) continue;
        compared++;
        const fd = (plus.s - minus.s) / (2 * h);
        expect(Math.abs((gv[i] as number) - fd), `${path} [${i}]`).toBeLessThan(2e-2 * Math.max(1, Math.abs(fd)));
      }
      expect(compared).toBeGreaterThanOrEqual(3);
      g.dispose();
    }
    tf.dispose([x, p, ...a, ...b, w, stacked.a, stacked.b]);
  });
});
