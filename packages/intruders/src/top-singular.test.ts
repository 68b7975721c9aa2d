import { describe, expect, it } from 'vitest';
import { matrix64, svd } from '@lora/linalg';
import { randomMatrix } from './reference.test-util';
import { type DiagonalPlusLowRank, topSingularTriplets } from './top-singular';

/** K = D + X·Yᵀ with D's entries as flat as a random matrix's singular values (no gap at the top). */
function flatCore(n1: number, n2: number, r: number, seed: number, updateScale: number): DiagonalPlusLowRank {
  const k = Math.min(n1, n2);
  const d = Float64Array.from({ length: k }, (_, i) => 1.3 - i / k);
  const x = randomMatrix(n1, r, seed, updateScale / Math.sqrt(n1)).data;
  const y = randomMatrix(n2, r, seed + 1, 1 / Math.sqrt(n2)).data;
  return { n1, n2, d, r, x, y };
}

function dense(core: DiagonalPlusLowRank) {
  const { n1, n2, d, r, x, y } = core;
  const a = matrix64(n1, n2);
  for (let i = 0; i < n1; i++)
    for (let j = 0; j < n2; j++) {
      let acc = i === j && i < d.length ? (d[i] as number) : 0;
      for (let c = 0; c < r; c++) acc += (x[i * r + c] as number) * (y[j * r + c] as number);
      a.data[i * n2 + j] = acc;
    }
  return svd(a);
}

describe('topSingularTriplets (thick-restarted block Lanczos on the core)', () => {
  for (const [n1, n2, updateScale] of [
    [300, 300, 3],
    [316, 300, 3],
    [300, 316, 0.3],
  ] as const) {
    it(`${n1}×${n2}, r 8, restarted (a 64-vector space): the exact SVD's leading 10 triplets`, () => {
      const core = flatCore(n1, n2, 8, n1 + n2, updateScale);
      const exact = dense(core);
      const got = topSingularTriplets(core, 10, { cycleDimension: 64 });
      expect(got).not.toBeNull();
      if (!got) return;
      expect(got.cycles).toBeGreaterThan(1);
      expect(got.residual).toBeLessThan(1e-7);
      const top = exact.S[0] as number;
      for (let t = 0; t < 10; t++) {
        expect(Math.abs((got.s[t] as number) - (exact.S[t] as number)) / top).toBeLessThan(1e-9);
        // sign-free: |⟨u, u_exact⟩| and |⟨v, v_exact⟩| are 1 where the value is simple
        let cu = 0;
        let cv = 0;
        for (let i = 0; i < n1; i++) cu += (got.u[t] as Float64Array)[i]! * exact.U.data[i * exact.U.cols + t]!;
        for (let i = 0; i < n2; i++) cv += (got.v[t] as Float64Array)[i]! * exact.Vh.data[t * n2 + i]!;
        expect(Math.abs(Math.abs(cu) - 1)).toBeLessThan(1e-6);
        expect(Math.abs(cu * cv - 1)).toBeLessThan(1e-6);
      }
    });
  }
  it('gives up (null) after maxCycles without convergence', () => {
    const core = flatCore(300, 300, 8, 5, 3);
    expect(topSingularTriplets(core, 10, { cycleDimension: 40, maxCycles: 1 })).toBeNull();
  });
  it('a space that reaches all of R^n2 is a dense decomposition (a 20×20 core)', () => {
    const core = flatCore(20, 20, 3, 9, 2);
    const exact = dense(core);
    const got = topSingularTriplets(core, 10);
    expect(got?.dimension).toBe(20);
    for (let t = 0; t < 10; t++) expect(Math.abs((got?.s[t] as number) - (exact.S[t] as number))).toBeLessThan(1e-12);
  });
});
