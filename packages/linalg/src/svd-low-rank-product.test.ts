import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import {
  type Matrix64,
  LinalgError,
  matmul64,
  matrix64,
  svd,
  svdOfLowRankProduct,
  svdOfLowRankSum,
  transpose64,
} from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, reconstruct, relFro } from './fixtures.test-util';

const g = new Generator(11);
const gauss = (rows: number, cols: number): Matrix64 => ({
  rows,
  cols,
  data: g.fillNormal64(new Float64Array(rows * cols)),
});
const scaled = (m: Matrix64, w: number): Matrix64 => ({ ...m, data: m.data.map((v) => v * w) });
const add = (x: Matrix64, y: Matrix64): Matrix64 => ({ ...x, data: x.data.map((v, i) => v + (y.data[i] as number)) });

/** The sum formed densely, and its exact SVD (float64, LAPACK-checked elsewhere). */
function reference(terms: { b: Matrix64; a: Matrix64; weight?: number }[]) {
  let sum: Matrix64 | null = null;
  for (const t of terms) {
    const p = scaled(matmul64(t.b, t.a), t.weight ?? 1);
    sum = sum ? add(sum, p) : p;
  }
  return { sum: sum as Matrix64, exact: svd(sum as Matrix64) };
}

describe('svdOfLowRankSum (float64)', () => {
  it('gives the nonzero singular triplets of Σ wᵢ·Bᵢ·Aᵢ exactly, without forming it', () => {
    const terms = [
      { b: gauss(40, 3), a: gauss(3, 30), weight: 0.5 },
      { b: gauss(40, 2), a: gauss(2, 30), weight: -1.5 },
    ];
    const { sum, exact } = reference(terms);
    const r = svdOfLowRankSum(terms);
    expect([r.U.rows, r.U.cols, r.S.length, r.Vh.rows, r.Vh.cols]).toEqual([40, 5, 5, 5, 30]);
    for (let i = 0; i < 5; i++)
      expect(Math.abs((r.S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-12 * (exact.S[0] as number));
    expect(relFro(reconstruct(r.U, r.S, r.Vh), sum.data)).toBeLessThan(1e-13);
    expect(orthogonalityError(r.U)).toBeLessThan(1e-13);
    expect(orthogonalityError(transpose64(r.Vh))).toBeLessThan(1e-13);
    // one product: the same as svdOfLowRankProduct
    const one = svdOfLowRankProduct(terms[0]?.b as Matrix64, terms[0]?.a as Matrix64);
    expect(
      relFro(reconstruct(one.U, one.S, one.Vh), matmul64(terms[0]?.b as Matrix64, terms[0]?.a as Matrix64).data),
    ).toBeLessThan(1e-13);
  });

  it('with `rank`, the leading triplets only: the same as the full result truncated', () => {
    const terms = [
      { b: gauss(60, 6), a: gauss(6, 45), weight: 0.7 },
      { b: gauss(60, 4), a: gauss(4, 45), weight: 1.3 },
    ];
    const all = svdOfLowRankSum(terms);
    const top = svdOfLowRankSum(terms, { rank: 4 });
    expect([top.U.rows, top.U.cols, top.S.length, top.Vh.rows, top.Vh.cols]).toEqual([60, 4, 4, 4, 45]);
    expect(Array.from(top.S)).toEqual(Array.from(all.S.subarray(0, 4)));
    // the rank-4 truncations agree (vectors are sign-ambiguous: compare products)
    const trunc = (r: typeof all) =>
      reconstruct(
        matrix64(
          60,
          4,
          Array.from({ length: 240 }, (_, i) => r.U.data[Math.floor(i / 4) * r.U.cols + (i % 4)] as number),
        ),
        r.S.subarray(0, 4),
        matrix64(4, 45, r.Vh.data.subarray(0, 4 * 45)),
      );
    expect(relFro(trunc(top), trunc(all))).toBeLessThan(1e-13);
    expect(orthogonalityError(top.U)).toBeLessThan(1e-13);
    expect(orthogonalityError(transpose64(top.Vh))).toBeLessThan(1e-13);
    // more than there are: all of them; not a positive integer: a clear error
    expect(svdOfLowRankProduct(terms[0]?.b as Matrix64, terms[0]?.a as Matrix64, { rank: 50 }).S.length).toBe(6);
    expect(() => svdOfLowRankSum(terms, { rank: 0 })).toThrow(
      'svdOfLowRankSum: rank 0 must be a positive integer (or left out for all triplets)',
    );
  });

  it('handles a sum of lower rank than its factors, and more factor columns than rows', () => {
    const b = gauss(25, 4);
    const a = gauss(4, 18);
    // B·A − B·A/2 − B·A/2 = 0, plus one more term: rank 4 out of 16 factor columns
    const terms = [
      { b, a },
      { b, a, weight: -0.5 },
      { b, a, weight: -0.5 },
      { b, a: gauss(4, 18), weight: 2 },
    ];
    const { sum, exact } = reference(terms);
    const r = svdOfLowRankSum(terms);
    expect(r.S.length).toBe(16);
    for (let i = 0; i < 16; i++)
      expect(Math.abs((r.S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-12 * (exact.S[0] as number));
    for (let i = 4; i < 16; i++) expect(r.S[i]).toBeLessThan(1e-12 * (r.S[0] as number));
    expect(relFro(reconstruct(r.U, r.S, r.Vh), sum.data)).toBeLessThan(1e-13);
    expect(orthogonalityError(r.U)).toBeLessThan(1e-12);
    const wide = svdOfLowRankSum([{ b: gauss(3, 6), a: gauss(6, 9) }]);
    expect([wide.U.cols, wide.S.length, wide.Vh.rows]).toEqual([3, 3, 3]);
  });

  it('rejects mismatched factors, no terms, non-finite weights or values, and mixed kinds', async () => {
    await tf.ready(); // the one tensor below needs a backend: the registered one may still be starting
    const b = gauss(5, 2);
    const a = gauss(2, 4);
    expect(() => svdOfLowRankSum([])).toThrow('svdOfLowRankSum: no terms; pass at least one {b, a}');
    expect(() =>
      svdOfLowRankSum([
        { b, a },
        { b: gauss(5, 3), a },
      ]),
    ).toThrow('svdOfLowRankSum: term 1 has B 5x3 and A 2x4; every B must be 5xr and its A rx4 with the same r');
    expect(() => svdOfLowRankSum([{ b, a, weight: Number.NaN }])).toThrow('term 0 has weight NaN');
    expect(() => svdOfLowRankSum([{ b: matrix64(1, 1, [Number.POSITIVE_INFINITY]), a: matrix64(1, 1, [1]) }])).toThrow(
      LinalgError,
    );
    const t = tf.tensor2d([1, 2], [2, 1]);
    expect(() => svdOfLowRankProduct(b, t as never)).toThrow('pass two Matrix64s or two tensors');
    t.dispose();
  });
});

await describeEachBackend('svdOfLowRankSum on tensors', () => {
  it('returns float32 tensors of the exact triplets, leaving nothing else behind', async () => {
    const terms = [
      { b: gauss(300, 16), a: gauss(16, 200), weight: 0.7 },
      { b: gauss(300, 8), a: gauss(8, 200), weight: -0.4 },
    ];
    const { sum, exact } = reference(terms);
    const tensors = terms.map((t) => ({
      b: tf.tensor2d(Float32Array.from(t.b.data), [t.b.rows, t.b.cols]),
      a: tf.tensor2d(Float32Array.from(t.a.data), [t.a.rows, t.a.cols]),
      weight: t.weight,
    }));
    const before = tf.memory().numTensors;
    const r = await svdOfLowRankSum(tensors);
    expect(tf.memory().numTensors).toBe(before + 3);
    const U = matrix64(300, 24, await r.U.data());
    const Vh = matrix64(24, 200, await r.Vh.data());
    const S = Float64Array.from(await r.S.data());
    for (let i = 0; i < 24; i++)
      expect(Math.abs((S[i] as number) - (exact.S[i] as number))).toBeLessThan(1e-6 * (exact.S[0] as number));
    expect(relFro(reconstruct(U, S, Vh), sum.data)).toBeLessThan(1e-6);
    tf.dispose([r.U, r.S, r.Vh, ...tensors.flatMap((t) => [t.a, t.b])]);
  });
});
