import { describe, expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import { magnitudePruneArray, mergeArrays } from './merge-arrays';

/** The reference: keep the entries of the k largest magnitudes, found by a stable sort (first index wins a tie). */
function pruneBySort(x: Float32Array, density: number): Float32Array {
  const k = Math.floor(density * x.length);
  const order = Array.from(x.keys()).sort((i, j) => Math.abs(x[j] as number) - Math.abs(x[i] as number) || i - j);
  const out = new Float32Array(x.length);
  for (const i of order.slice(0, k)) out[i] = x[i] as number;
  return out;
}

describe('merge on float32 arrays', () => {
  it('keeps exactly floor(density·n) entries by magnitude, ties at the cut in index order', () => {
    const g = new Generator(3);
    for (const n of [1, 7, 100, 1001]) {
      const x = g.fillNormal(new Float32Array(n));
      for (const d of [0, 0.01, 0.3, 0.5, 0.999, 1])
        expect(Array.from(magnitudePruneArray(x, d)), `${n} ${d}`).toEqual(Array.from(pruneBySort(x, d)));
    }
    // magnitudes over 60 decades, with the cut inside one histogram bucket of many near values, and in a view
    const wide = g.fillNormal(new Float32Array(20_000));
    for (let i = 0; i < wide.length; i++)
      wide[i] = (wide[i] as number) * 10 ** ((i % 61) - 30) * (i % 7 === 0 ? 1 : 1e-3);
    const near = Float32Array.from({ length: 5000 }, (_, i) => (i % 2 ? -1 : 1) * (1 + ((i * 37) % 101) * 2 ** -23));
    const view = new Float32Array(wide.buffer, 4 * 100, 3000);
    for (const x of [wide, near, view])
      for (const d of [0.001, 0.37, 0.5, 0.9])
        expect(Array.from(magnitudePruneArray(x, d)), `${x.length} ${d}`).toEqual(Array.from(pruneBySort(x, d)));
    const tied = Float32Array.from([1, -2, 2, 0, 2, -2, 3, 0.5]);
    expect(Array.from(magnitudePruneArray(tied, 0.5))).toEqual([0, -2, 2, 0, 2, 0, 3, 0]);
    expect(Array.from(magnitudePruneArray(new Float32Array(10), 0.5))).toEqual(Array(10).fill(0));
  });

  it("merges as PEFT's ties: sign elected by sum or by vote, agreeing weighted entries averaged", () => {
    const a = Float32Array.from([1, -1, 2, 0, -3]);
    const b = Float32Array.from([-2, -1, 1, 0, 1]);
    const g = new Generator(0);
    // total: votes −1, −2, 3, 0, −2 → elected −1, −1, +1, +1, −1
    expect(Array.from(mergeArrays([a, b], [1, 2], 'none', 'total', 1, g))).toEqual([-4, -1.5, 2, 0, -3]);
    // frequency: votes 0, −2, 2, 0, 0 → elected +1, −1, +1, +1, +1
    expect(Array.from(mergeArrays([a, b], [1, 2], 'none', 'frequency', 1, g))).toEqual([1, -1.5, 2, 0, 2]);
    expect(Array.from(mergeArrays([a, b], [0.5, 1], 'none', false, 1, g))).toEqual([-1.5, -1.5, 2, 0, -0.5]);
  });
});
