import { describe, expect, it } from 'vitest';
import {
  LinalgError,
  cholesky,
  eigh,
  matmul64,
  matrix64,
  norm,
  qr,
  solveTriangular,
  svd,
  transpose64,
  tridiagonalEigenFirst,
} from '@lora/linalg';
import { orthogonalityError, readFixture, reconstruct, relFro } from './fixtures.test-util';

const battery = readFixture('lapack-battery.safetensors');
const shapes = JSON.parse(battery.metadata.matrices as string) as Record<string, [number, number]>;
const symmetric = JSON.parse(battery.metadata.symmetric as string) as string[];
const TOL = 1e-12;

describe('svd (float64) against LAPACK on the accuracy battery', () => {
  for (const name of Object.keys(shapes)) {
    it(`${name}: reconstruction, orthogonality and singular values`, () => {
      const a = battery.get(`${name}.a`);
      const lapack = battery.vector(`${name}.s`);
      const { U, S, Vh } = svd(a);
      const k = Math.min(a.rows, a.cols);
      expect([U.rows, U.cols, S.length, Vh.rows, Vh.cols]).toEqual([a.rows, k, k, k, a.cols]);
      expect(relFro(reconstruct(U, S, Vh), a.data)).toBeLessThanOrEqual(TOL);
      const smax = lapack[0] as number;
      if (smax > 0) {
        expect(orthogonalityError(U)).toBeLessThanOrEqual(TOL);
        expect(orthogonalityError(transpose64(Vh))).toBeLessThanOrEqual(TOL);
      }
      for (let i = 0; i < k; i++) {
        expect(S[i]).toBeGreaterThanOrEqual(0);
        if (i > 0) expect(S[i]).toBeLessThanOrEqual(S[i - 1] as number);
        // Both are backward stable: errors are relative to the largest singular value, and relative
        // to the value itself wherever it is well above the noise floor (1e-3·σmax).
        const err = Math.abs((S[i] as number) - (lapack[i] as number));
        expect(err).toBeLessThanOrEqual(TOL * smax + 1e-300);
        if ((lapack[i] as number) > 1e-3 * smax) expect(err / (lapack[i] as number)).toBeLessThanOrEqual(TOL);
      }
    });
  }

  it('returns full matrices when asked, still orthogonal and reconstructing', () => {
    for (const name of ['gauss_tall_120x40', 'gauss_wide_30x90']) {
      const a = battery.get(`${name}.a`);
      const { U, S, Vh } = svd(a, { fullMatrices: true });
      expect([U.rows, U.cols, Vh.rows, Vh.cols]).toEqual([a.rows, a.rows, a.cols, a.cols]);
      expect(orthogonalityError(U)).toBeLessThanOrEqual(TOL);
      expect(orthogonalityError(transpose64(Vh))).toBeLessThanOrEqual(TOL);
      const k = S.length;
      const Uk = matrix64(
        a.rows,
        k,
        Array.from({ length: a.rows * k }, (_, i) => U.data[Math.floor(i / k) * a.rows + (i % k)] as number),
      );
      const Vk = matrix64(k, a.cols, Vh.data.subarray(0, k * a.cols));
      expect(relFro(reconstruct(Uk, S, Vk), a.data)).toBeLessThanOrEqual(TOL);
    }
  });
});

describe('qr (float64) against LAPACK', () => {
  for (const name of Object.keys(shapes)) {
    it(`${name}: Q·R = A, QᵀQ = I, |diag R| as LAPACK`, () => {
      const a = battery.get(`${name}.a`);
      for (const mode of ['reduced', 'complete'] as const) {
        const { Q, R } = qr(a, { mode });
        const k = mode === 'reduced' ? Math.min(a.rows, a.cols) : a.rows;
        expect([Q.rows, Q.cols, R.rows, R.cols]).toEqual([a.rows, k, k, a.cols]);
        expect(relFro(matmul64(Q, R).data, a.data)).toBeLessThanOrEqual(TOL);
        expect(orthogonalityError(Q)).toBeLessThanOrEqual(TOL);
        for (let i = 0; i < R.rows; i++)
          for (let j = 0; j < Math.min(i, R.cols); j++) expect(R.data[i * R.cols + j]).toBe(0);
      }
      const { R } = qr(a);
      const want = battery.vector(`${name}.r_absdiag`);
      const scale = Math.max(...want, 0);
      want.forEach((w, i) => {
        expect(Math.abs(Math.abs(R.data[i * R.cols + i] as number) - w)).toBeLessThanOrEqual(1e-12 * scale + 1e-300);
      });
    });
  }
});

describe('eigh (float64) against LAPACK', () => {
  for (const name of symmetric) {
    it(`${name}: ascending values, orthonormal vectors, A·V = V·Λ`, () => {
      const a = battery.get(`${name}.sym`);
      const lapack = battery.vector(`${name}.w`);
      const { values, vectors } = eigh(a);
      const scale = Math.max(...lapack.map(Math.abs), 0);
      lapack.forEach((w, i) => {
        expect(Math.abs((values[i] as number) - w)).toBeLessThanOrEqual(TOL * scale + 1e-300);
      });
      expect(orthogonalityError(vectors)).toBeLessThanOrEqual(TOL);
      expect(relFro(reconstruct(vectors, values, transpose64(vectors)), a.data)).toBeLessThanOrEqual(TOL);
    });
  }

  it('reads only the lower triangle, as torch does by default', () => {
    const { values } = eigh(
      matrix64([
        [2, 100],
        [1, 2],
      ]),
    );
    expect(values[0]).toBeCloseTo(1, 14);
    expect(values[1]).toBeCloseTo(3, 14);
  });
});

describe('tridiagonalEigenFirst (the Gauss rule of a Jacobi matrix)', () => {
  it('gives the Gauss–Legendre rule: nodes 0, ±√(3/5), weights 4/9 and 5/18', () => {
    // the Jacobi matrix of the uniform measure on [−1, 1] (total mass 1): β_k = k/√(4k² − 1)
    const beta = [1, 2].map((k) => k / Math.sqrt(4 * k * k - 1));
    const { values, first } = tridiagonalEigenFirst([0, 0, 0], beta);
    const nodes = [-Math.sqrt(3 / 5), 0, Math.sqrt(3 / 5)];
    const weights = [5 / 18, 4 / 9, 5 / 18];
    for (let i = 0; i < 3; i++) {
      expect(Math.abs((values[i] as number) - (nodes[i] as number))).toBeLessThan(1e-15);
      expect(Math.abs((first[i] as number) ** 2 - (weights[i] as number))).toBeLessThan(1e-15);
    }
  });

  it("matches eigh's values and first vector entries on random tridiagonals, and leaves its inputs", () => {
    let seed = 5;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31 - 0.5;
    };
    for (const n of [1, 2, 7, 32, 48]) {
      const diag = Array.from({ length: n }, rand);
      const off = Array.from({ length: n - 1 }, () => 0.1 + Math.abs(rand()));
      const dense = matrix64(n, n);
      for (let i = 0; i < n; i++) {
        dense.data[i * n + i] = diag[i] as number;
        if (i + 1 < n) {
          dense.data[i * n + i + 1] = off[i] as number;
          dense.data[(i + 1) * n + i] = off[i] as number;
        }
      }
      const full = eigh(dense);
      const before = [...diag, ...off];
      const { values, first } = tridiagonalEigenFirst(diag, off);
      expect([...diag, ...off]).toEqual(before);
      let total = 0;
      for (let c = 0; c < n; c++) {
        expect(Math.abs((values[c] as number) - (full.values[c] as number))).toBeLessThan(1e-13);
        expect(Math.abs((first[c] as number) ** 2 - (full.vectors.data[c] as number) ** 2)).toBeLessThan(1e-13);
        total += (first[c] as number) ** 2;
      }
      expect(Math.abs(total - 1)).toBeLessThan(1e-13);
    }
  });

  it('refuses an off-diagonal too short for the diagonal', () => {
    expect(() => tridiagonalEigenFirst([1, 2, 3], [0.5])).toThrow(
      'eigh: a tridiagonal of 3 needs 2 off-diagonal entries, got 1',
    );
  });
});

describe('cholesky, solveTriangular and norm', () => {
  const spd = battery.get('spd_cond_1e10_40.sym');
  const shifted = matrix64(
    spd.rows,
    spd.cols,
    spd.data.map((v, i) => v + (i % (spd.cols + 1) === 0 ? 1 : 0)),
  );

  it('cholesky gives L·Lᵀ = A with a positive diagonal', () => {
    const L = cholesky(shifted);
    expect(relFro(matmul64(L, L, { transposeB: true }).data, shifted.data)).toBeLessThanOrEqual(TOL);
    for (let i = 0; i < L.rows; i++) {
      expect(L.data[i * L.cols + i]).toBeGreaterThan(0);
      for (let j = i + 1; j < L.cols; j++) expect(L.data[i * L.cols + j]).toBe(0);
    }
  });

  it('cholesky refuses a matrix that is not positive definite', () => {
    expect(() => cholesky(battery.get('indefinite_3.sym'))).toThrow(/not positive definite \(leading minor of order 2/);
  });

  it('solveTriangular solves both sides and both triangles', () => {
    const L = cholesky(shifted);
    const b = battery.get('gauss_tall_120x40.a');
    const bt = matrix64(40, 3, b.data.subarray(0, 120));
    const x = solveTriangular(L, bt, { upper: false });
    expect(relFro(matmul64(L, x).data, bt.data)).toBeLessThanOrEqual(1e-12);
    const xu = solveTriangular(transpose64(L), bt, { upper: true });
    expect(relFro(matmul64(transpose64(L), xu).data, bt.data)).toBeLessThanOrEqual(1e-12);
    const right = solveTriangular(L, transpose64(bt), { upper: false, left: false });
    expect(relFro(matmul64(right, L).data, transpose64(bt).data)).toBeLessThanOrEqual(1e-12);
    expect(() => solveTriangular(L, bt, {} as { upper: boolean })).toThrow(/options.upper/);
  });

  it('norm gives the Frobenius norm and the largest singular value, without overflow', () => {
    const a = battery.get('huge_30x20.a');
    let fro = 0;
    for (const v of a.data) fro += (v / 1e30) ** 2;
    expect(Math.abs(norm(a) / (Math.sqrt(fro) * 1e30) - 1)).toBeLessThan(1e-14);
    expect(Math.abs(norm(a, 2) / (battery.vector('huge_30x20.s')[0] as number) - 1)).toBeLessThan(1e-13);
    expect(
      norm(
        matrix64([
          [3, 0],
          [0, 4],
        ]),
        2,
      ),
    ).toBeCloseTo(4, 14);
  });
});

describe('bad input', () => {
  it('rejects NaN and Inf with the position', () => {
    const a = matrix64([
      [1, 2],
      [Number.NaN, 4],
    ]);
    for (const f of [() => svd(a), () => qr(a), () => eigh(a), () => cholesky(a), () => norm(a, 2)]) {
      expect(f).toThrow(LinalgError);
      expect(f).toThrow(/has NaN at \(1, 0\)/);
    }
    expect(() => svd(matrix64([[Number.POSITIVE_INFINITY]]))).toThrow(/has Infinity at \(0, 0\)/);
  });

  it('rejects wrong shapes with the shapes', () => {
    expect(() => eigh(matrix64(2, 3))).toThrow(/expected a square matrix, got 2x3/);
    expect(() => matmul64(matrix64(2, 3), matrix64(2, 3))).toThrow(/cannot multiply 2x3 by 2x3/);
    expect(() => matrix64([[1, 2], [3]])).toThrow(/row 1 has 1 entries/);
    expect(() => qr(matrix64(2, 2), { mode: 'full' as 'reduced' })).toThrow(/mode 'full'/);
  });
});
