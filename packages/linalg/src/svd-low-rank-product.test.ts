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

  it("with qrMethod 'cholesky', the same triplets; where its factor is ill-conditioned, the Householder path's", () => {
    const check = (terms: { b: Matrix64; a: Matrix64; weight?: number }[], rank: number, tol: number) => {
      const { sum, exact } = reference(terms);
      const fast = svdOfLowRankSum(terms, { rank, qrMethod: 'cholesky' });
      const house = svdOfLowRankSum(terms, { rank });
      expect(fast.S.length).toBe(rank);
      for (let i = 0; i < rank; i++)
        expect(Math.abs((fast.S[i] as number) - (exact.S[i] as number))).toBeLessThan(tol * (exact.S[0] as number));
      expect(orthogonalityError(fast.U)).toBeLessThan(tol);
      expect(orthogonalityError(transpose64(fast.Vh))).toBeLessThan(tol);
      // the rank-`rank` truncation of the sum, against the Householder path's
      const full = svdOfLowRankSum(terms);
      const truncated = (r: typeof full) =>
        reconstruct(
          matrix64(
            r.U.rows,
            rank,
            Array.from(
              { length: r.U.rows * rank },
              (_, i) => r.U.data[Math.floor(i / rank) * r.U.cols + (i % rank)] as number,
            ),
          ),
          r.S.subarray(0, rank),
          matrix64(rank, r.Vh.cols, r.Vh.data.subarray(0, rank * r.Vh.cols)),
        );
      expect(relFro(truncated(fast), truncated(house))).toBeLessThan(tol);
      expect(sum.rows).toBe(fast.U.rows);
      return { fast, house };
    };
    // well-conditioned stacked factors of very different column scales (as [L, f·U_I] in intruder
    // mitigation): the Cholesky path runs (its rounding differs from Householder's in the last bits)
    const l = gauss(300, 6);
    const big = scaled(gauss(300, 3), 40);
    const left = matrix64(
      300,
      9,
      Array.from({ length: 2700 }, (_, i) => {
        const row = Math.floor(i / 9);
        const col = i % 9;
        return col < 6 ? (l.data[row * 6 + col] as number) : (big.data[row * 3 + col - 6] as number);
      }),
    );
    const { fast, house } = check([{ b: left, a: gauss(9, 120) }], 6, 1e-11);
    expect(Array.from(fast.S)).not.toEqual(Array.from(house.S));
    // nearly dependent columns (κ ≈ 10⁷: a Cholesky QR would lose orthogonality to ~10⁻²) and a
    // zero column: refused, the Householder path's exact result
    const near = gauss(200, 5);
    for (let i = 0; i < 200; i++) near.data[i * 5 + 4] = (near.data[i * 5 + 3] as number) * (1 + 1e-7 * ((i % 7) - 3));
    check([{ b: near, a: gauss(5, 80) }], 5, 1e-11);
    const zero = gauss(150, 4);
    for (let i = 0; i < 150; i++) zero.data[i * 4 + 2] = 0;
    const withZero = svdOfLowRankSum([{ b: zero, a: gauss(4, 60) }], { rank: 3, qrMethod: 'cholesky' });
    expect(withZero.S.every(Number.isFinite)).toBe(true);
    expect(orthogonalityError(withZero.U)).toBeLessThan(1e-12);
    expect(() => svdOfLowRankSum([{ b: zero, a: gauss(4, 60) }], { qrMethod: 'qr' as 'cholesky' })).toThrow(
      `svdOfLowRankSum: qrMethod "qr" must be 'householder' or 'cholesky'`,
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
