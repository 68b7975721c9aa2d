import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { magnitudePruneTensor } from './magnitude-prune';

/** The reference: keep the entries of the k largest magnitudes, found by a stable sort (first index wins a tie). */
function pruneBySort(x: Float32Array, density: number): Float32Array {
  const k = Math.floor(density * x.length);
  const order = Array.from(x.keys()).sort((i, j) => Math.abs(x[j] as number) - Math.abs(x[i] as number) || i - j);
  const out = new Float32Array(x.length);
  for (const i of order.slice(0, k)) out[i] = x[i] as number;
  return out;
}

/** Values with −0 as 0 (a pruned negative entry is −0 from the mask product). */
const plain = (x: Float32Array) => Array.from(x, (v) => v + 0);

async function pruned(values: Float32Array[], shapes: number[][], density: number): Promise<number[][]> {
  const inputs = values.map((v, i) => tf.tensor(v, shapes[i]));
  const before = tf.memory().numTensors;
  const out = await magnitudePruneTensor(inputs, density);
  expect(tf.memory().numTensors - before).toBe(inputs.length);
  const got: number[][] = [];
  for (const [i, t] of out.entries()) {
    expect(t.shape).toEqual(shapes[i]);
    got.push(Array.from(await t.data(), (v) => v + 0));
  }
  tf.dispose([...inputs, ...out]);
  return got;
}

await describeEachBackend('magnitude pruning on the backend', () => {
  it('keeps exactly floor(density·n) entries by magnitude, as a stable sort does, several tensors at once', async () => {
    const g = new Generator(5);
    const a = g.fillNormal(new Float32Array(64 * 48));
    const b = g.fillNormal(new Float32Array(1001));
    for (let i = 0; i < b.length; i++) b[i] = (b[i] as number) * 1e-30; // a far range of exponents
    for (const d of [0.01, 0.3, 0.5, 0.999]) {
      const [pa, pb] = await pruned([a, b], [[64, 48], [1001]], d);
      expect(pa, `${d}`).toEqual(plain(pruneBySort(a, d)));
      expect(pb, `${d}`).toEqual(plain(pruneBySort(b, d)));
    }
  });

  it('keeps the first of the magnitudes equal to the cut, in index order', async () => {
    // magnitudes 0..3 repeated: every cut falls among many equal values, of both signs
    const x = Float32Array.from({ length: 999 }, (_, i) => ((i * 7) % 4) * (i % 3 === 0 ? -1 : 1));
    for (const d of [0.1, 0.25, 0.5, 0.77]) {
      const [p] = await pruned([x], [[999]], d);
      expect(p, `${d}`).toEqual(plain(pruneBySort(x, d)));
    }
  });

  it('keeps every non-zero where fewer than k are, and handles density 0 and 1', async () => {
    const x = new Float32Array(100);
    x[3] = -2;
    x[50] = 1e-3;
    x[99] = 5;
    expect((await pruned([x], [[100]], 0.5))[0]).toEqual(plain(x));
    expect((await pruned([x], [[100]], 0.02))[0]).toEqual(plain(pruneBySort(x, 0.02)));
    expect((await pruned([x], [[100]], 0.005))[0]).toEqual(Array(100).fill(0));
    expect((await pruned([x], [[100]], 1))[0]).toEqual(plain(x));
  });
});
