/**
 * The numeric checks every backend must pass. Shared by the vitest suite (backend-suite.test.ts)
 * and the plain-Node runner used on machines without vitest (scripts/check-webgpu.ts).
 * References are float64 loops and closed forms, never another backend's output.
 */
import * as tf from '@tensorflow/tfjs-core';
import { assertNoLeaks } from './memory';
import { Generator } from './random';
import { parseSafetensors } from './safetensors-reader';
import { serializeSafetensors } from './safetensors-writer';
import { maxRelativeError } from './parity';

export interface SuiteCase {
  name: string;
  run: () => Promise<void>;
}

function check(ok: boolean, message: string): void {
  if (!ok) throw new Error(message);
}

function matmul64(a: Float32Array, b: Float32Array, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p] as number;
      for (let j = 0; j < n; j++) out[i * n + j] = (out[i * n + j] as number) + av * (b[p * n + j] as number);
    }
  return out;
}

export const backendSuite: SuiteCase[] = [
  {
    name: 'matmul of 96x80 by 80x72 matches a float64 reference to 1e-5, leaving no tensors',
    run: async () => {
      const g = new Generator(1);
      const a = g.fillUniform(new Float32Array(96 * 80), -1, 1);
      const b = g.fillUniform(new Float32Array(80 * 72), -1, 1);
      const before = tf.memory().numTensors;
      const y = tf.tidy(() => tf.matMul(tf.tensor2d(a, [96, 80]), tf.tensor2d(b, [80, 72])));
      const got = await y.data();
      y.dispose();
      check(tf.memory().numTensors === before, `numTensors ${tf.memory().numTensors} != ${before}`);
      const err = maxRelativeError(got, matmul64(a, b, 96, 80, 72));
      check(err < 1e-5, `relative error ${err}`);
    },
  },
  {
    name: 'LoRA gradients (x·Aᵀ·Bᵀ summed and scaled) match the closed form to 1e-5',
    run: async () => {
      // loss = s · Σ x Aᵀ Bᵀ; dL/dA[k,j] = s · (Σ_o B[o,k]) · (Σ_i x[i,j]); dL/dB[o,k] = s · Σ_j A[k,j] · (Σ_i x[i,j])
      const g = new Generator(2);
      const [n, din, dout, r, s] = [5, 7, 6, 3, 0.5] as const;
      const x = g.rand([n, din], -1, 1);
      const a = g.rand([r, din], -1, 1);
      const b = g.rand([dout, r], -1, 1);
      const grads = tf.grads((aa: tf.Tensor, bb: tf.Tensor) =>
        tf.mul(tf.sum(tf.matMul(tf.matMul(x, aa, false, true), bb, false, true)), s),
      )([a, b]);
      const [ga, gb] = await Promise.all(grads.map((t) => t.data()));
      const [xv, av, bv] = await Promise.all([x.data(), a.data(), b.data()]);
      tf.dispose([x, a, b, ...grads]);
      const xsum = new Float64Array(din);
      for (let i = 0; i < n; i++)
        for (let j = 0; j < din; j++) xsum[j] = (xsum[j] as number) + (xv[i * din + j] as number);
      const bcol = new Float64Array(r);
      for (let o = 0; o < dout; o++)
        for (let k = 0; k < r; k++) bcol[k] = (bcol[k] as number) + (bv[o * r + k] as number);
      const axsum = new Float64Array(r);
      for (let k = 0; k < r; k++)
        for (let j = 0; j < din; j++)
          axsum[k] = (axsum[k] as number) + (av[k * din + j] as number) * (xsum[j] as number);
      const wantA = Float64Array.from(
        { length: r * din },
        (_, i) => s * (bcol[Math.floor(i / din)] as number) * (xsum[i % din] as number),
      );
      const wantB = Float64Array.from({ length: dout * r }, (_, i) => s * (axsum[i % r] as number));
      check(
        maxRelativeError(ga as Float32Array, wantA) < 1e-5,
        `dA error ${maxRelativeError(ga as Float32Array, wantA)}`,
      );
      check(
        maxRelativeError(gb as Float32Array, wantB) < 1e-5,
        `dB error ${maxRelativeError(gb as Float32Array, wantB)}`,
      );
    },
  },
  {
    name: 'an Adam step on LoRA factors lowers the loss and leaves the frozen weight untouched',
    run: async () => {
      const g = new Generator(4);
      const x = g.rand([16, 12], -1, 1);
      const target = g.rand([16, 10], -1, 1);
      const w = g.rand([10, 12], -0.3, 0.3);
      const a = tf.variable(g.rand([4, 12], -0.3, 0.3));
      const b = tf.variable(tf.zeros([10, 4]));
      const w0 = await w.data();
      const opt = tf.train.adam(1e-2);
      const lossOf = () =>
        tf.tidy(() => {
          const y = tf.add(
            tf.matMul(x, w, false, true),
            tf.mul(tf.matMul(tf.matMul(x, a, false, true), b, false, true), 2),
          );
          return tf.mean(tf.square(tf.sub(y, target))) as tf.Scalar;
        });
      const first = lossOf();
      const l0 = (await first.data())[0] as number;
      first.dispose();
      for (let i = 0; i < 20; i++) opt.minimize(lossOf, true, [a, b])?.dispose();
      const last = lossOf();
      const l1 = (await last.data())[0] as number;
      check(l1 < l0 * 0.98, `loss ${l0} -> ${l1} did not fall`);
      check(maxRelativeError(await w.data(), w0) === 0, 'the frozen weight changed');
      check(maxRelativeError(await b.data(), new Float32Array(40)) > 0, 'B never changed');
      opt.dispose();
      tf.dispose([x, target, w, a, b, last]);
    },
  },
  {
    name: 'safetensors written from and read into this backend round-trip exactly, without leaks',
    run: async () => {
      const t = new Generator(3).randn([4, 5]);
      const bytes = await assertNoLeaks(
        () => serializeSafetensors({ w: t }, { metadata: { format: 'pt' } }),
        'serialize',
      );
      const parsed = assertNoLeaks(() => parseSafetensors(bytes), 'parse');
      const [got, want] = await Promise.all([parsed.tensors.w!.data(), t.data()]);
      tf.dispose([t, ...Object.values(parsed.tensors)]);
      check(maxRelativeError(got, want) === 0, 'values changed in the round trip');
    },
  },
  {
    name: 'seeded random tensors are the same numbers the generator makes in plain JS',
    run: async () => {
      const t = new Generator(123).rand([3, 3]);
      const v = await t.data();
      t.dispose();
      const again = new Generator(123).fillUniform(new Float32Array(9));
      check(maxRelativeError(v, again) === 0, 'generator output differs on this backend');
    },
  },
];
