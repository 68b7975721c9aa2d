/**
 * The larger test matrices of tools/oracle/linalg_large_fixtures.py, rebuilt from the same closed
 * forms (float64, row-major), with LAPACK's spectra from __fixtures__/lapack-large.json.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Matrix64 } from './matrix64';

/** Orthonormal DCT-II, row k = the k-th basis vector (n×n, row-major). */
function dct(n: number): Float64Array {
  const c = new Float64Array(n * n);
  for (let k = 0; k < n; k++)
    for (let i = 0; i < n; i++)
      c[k * n + i] = k === 0 ? Math.sqrt(1 / n) : Math.cos((Math.PI * (2 * i + 1) * k) / (2 * n)) * Math.sqrt(2 / n);
  return c;
}

export function withSpectrum(m: number, n: number, s: number[]): Matrix64 {
  const k = s.length;
  const cu = dct(m);
  const cv = dct(n);
  const a = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      const pj = (7 * j + 3) % n;
      let x = 0;
      for (let t = 0; t < k; t++) x += (cu[t * m + i] as number) * (s[t] as number) * (cv[t * n + pj] as number);
      a[i * n + j] = x;
    }
  return { rows: m, cols: n, data: a };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

const builders: Record<string, () => Matrix64> = {
  hilbert_200: () => {
    const n = 200;
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) a[i * n + j] = 1 / (i + j + 1);
    return { rows: n, cols: n, data: a };
  },
  graded_300: () =>
    withSpectrum(
      300,
      300,
      range(300).map((i) => 10 ** ((-12 * i) / 299)),
    ),
  clustered_256: () =>
    withSpectrum(256, 256, [
      ...range(40).map(() => 3),
      ...range(60).map((i) => 2 + 1e-6 * i),
      ...range(60).map(() => 1),
      ...range(96).map((i) => 0.5 ** i),
    ]),
  rank20_300x280: () =>
    withSpectrum(
      300,
      280,
      range(20).map((i) => 5 - (4 * i) / 19),
    ),
  tall_graded_600x150: () =>
    withSpectrum(
      600,
      150,
      range(150).map((i) => 10 ** ((-6 * i) / 149)),
    ),
  sines_150x400: () => {
    const a = new Float64Array(150 * 400);
    for (let r = 0; r < 150; r++)
      for (let c = 0; c < 400; c++) a[r * 400 + c] = Math.sin(0.7 * r * c + r) + Math.cos(0.3 * c) / (1 + r);
    return { rows: 150, cols: 400, data: a };
  },
};

interface Entry {
  shape: [number, number];
  s: number[];
  sym_w?: number[];
}

const fixture = JSON.parse(
  readFileSync(join(import.meta.dirname, '..', '__fixtures__', 'lapack-large.json'), 'utf8'),
) as { matrices: Record<string, Entry> };

/** The large battery: each matrix with LAPACK's singular values (and, when square, the eigenvalues of its symmetric part). */
export function largeBattery(): { name: string; a: Matrix64; s: Float64Array; symW?: Float64Array }[] {
  return Object.entries(fixture.matrices).map(([name, e]) => {
    const build = builders[name];
    if (!build) throw new Error(`lapack-large.json has '${name}', which large-matrices.test-util.ts cannot build`);
    const a = build();
    if (a.rows !== e.shape[0] || a.cols !== e.shape[1]) throw new Error(`${name}: shape mismatch`);
    return { name, a, s: Float64Array.from(e.s), ...(e.sym_w ? { symW: Float64Array.from(e.sym_w) } : {}) };
  });
}
