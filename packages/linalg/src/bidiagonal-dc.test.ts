import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Generator, initBackend } from '@lora/tensor';
import { bidiagonalDc } from './bidiagonal-dc';
import { svd64 } from './svd-float64';

/** B (n×n upper bidiagonal) as a dense row-major array. */
function dense(d: Float64Array, e: Float64Array): Float64Array {
  const n = d.length;
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    a[i * n + i] = d[i] as number;
    if (i + 1 < n) a[i * n + i + 1] = e[i] as number;
  }
  return a;
}

/** max |B − U·diag(σ)·Wᵀ|, max |UᵀU − I| and max |WᵀW − I| (row-major n×n U, W). */
function errors(b: Float64Array, sigma: Float64Array, u: Float64Array, w: Float64Array, n: number) {
  let rec = 0;
  let orth = 0;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let c = 0; c < n; c++) s += (u[i * n + c] as number) * (sigma[c] as number) * (w[j * n + c] as number);
      rec = Math.max(rec, Math.abs(s - (b[i * n + j] as number)));
    }
  for (const x of [u, w])
    for (let i = 0; i < n; i++)
      for (let j = i; j < n; j++) {
        let s = 0;
        for (let r = 0; r < n; r++) s += (x[r * n + i] as number) * (x[r * n + j] as number);
        orth = Math.max(orth, Math.abs(s - (i === j ? 1 : 0)));
      }
  return { rec, orth };
}

const g = new Generator(7);
const normal = (n: number) => g.fillNormal64(new Float64Array(n));
const cases: [string, Float64Array, Float64Array][] = [
  ['gaussian 10 (one leaf)', normal(10), normal(9)],
  ['gaussian 57', normal(57), normal(56)],
  ['gaussian 160', normal(160), normal(159)],
  ['identity 120 (everything deflates)', new Float64Array(120).fill(1), new Float64Array(119)],
  ['all ones 150 (clustered)', new Float64Array(150).fill(1), new Float64Array(149).fill(1)],
  [
    'graded 1 … 1e-20',
    Float64Array.from({ length: 200 }, (_, i) => 10 ** (-i / 10)),
    Float64Array.from({ length: 199 }, (_, i) => 10 ** (-i / 10)),
  ],
  ['zero diagonal (σ in ± pairs)', new Float64Array(101), normal(100)],
  [
    'zeros and tiny values scattered',
    Float64Array.from({ length: 150 }, (_, i) => (i % 3 === 0 ? 0 : 1e-20 * i)),
    Float64Array.from({ length: 149 }, (_, i) => (i % 5 ? 1 : 0)),
  ],
  ['zero matrix', new Float64Array(64), new Float64Array(63)],
];

describe('divide-and-conquer bidiagonal SVD (float64)', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  for (const [label, d, e] of cases) {
    it(`${label}: the singular values of the QR sweeps, orthogonal vectors, B = U·Σ·Wᵀ`, async () => {
      const n = d.length;
      const b = dense(d, e);
      const ref = svd64({ rows: n, cols: n, data: b }, false);
      const { sigma, vectors } = await bidiagonalDc(d, e, { tensorFrom: Number.POSITIVE_INFINITY });
      if (vectors.tensors) throw new Error('expected float64 vectors');
      const scale = Math.max(ref.S[0] as number, Number.MIN_VALUE);
      for (let i = 0; i < n; i++) {
        expect(Math.abs((sigma[i] as number) - (ref.S[i] as number)) / scale, `σ${i}`).toBeLessThan(1e-13);
        if (i > 0) expect(sigma[i]).toBeLessThanOrEqual(sigma[i - 1] as number);
      }
      const { rec, orth } = errors(b, sigma, vectors.u as Float64Array, vectors.w, n);
      expect(rec / scale).toBeLessThan(1e-13);
      expect(orth).toBeLessThan(1e-13);
    });
  }

  it('joins large nodes on the backend: float32 vectors, float64 values, no tensor left over', async () => {
    const n = 200;
    const d = normal(n);
    const e = normal(n - 1);
    const before = tf.memory().numTensors;
    const { sigma, vectors } = await bidiagonalDc(d, e, { tensorFrom: 40, leafSize: 12 });
    if (!vectors.tensors) throw new Error('expected tensors');
    expect(tf.memory().numTensors).toBe(before + 2);
    const u = Float64Array.from(await (vectors.u as tf.Tensor2D).data());
    const w = Float64Array.from(await vectors.w.data());
    tf.dispose([vectors.u as tf.Tensor2D, vectors.w]);
    const b = dense(d, e);
    const ref = svd64({ rows: n, cols: n, data: b }, false);
    for (let i = 0; i < n; i++)
      expect(Math.abs((sigma[i] as number) - (ref.S[i] as number))).toBeLessThan(1e-12 * (ref.S[0] as number));
    const { rec, orth } = errors(b, sigma, u, w, n);
    expect(rec / (ref.S[0] as number)).toBeLessThan(1e-5);
    expect(orth).toBeLessThan(1e-5);
  });
});
