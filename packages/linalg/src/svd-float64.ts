/**
 * The float64 SVD on typed arrays: Householder bidiagonalisation and implicit-shift QR (Golub–Kahan),
 * tall matrices QR-factored first. The accuracy reference of every other path.
 */
import { bidiagonalSvd } from './bidiagonal-svd';
import { LinalgError } from './errors';
import { accumulateReflectors, applyReflectorLeft, applyReflectorRight, makeReflector } from './householder';
import { type Matrix64, assertFinite, fromColumnMajor, toColumnMajor } from './matrix64';
import { householderQr } from './qr';

/** Result of the float64 SVD of a Matrix64: `a = U·diag(S)·Vh`, S descending. */
export interface Svd64 {
  U: Matrix64;
  S: Float64Array;
  Vh: Matrix64;
}

/** Below this aspect ratio a tall matrix is bidiagonalised directly; above it, QR first (as LAPACK does). */
const QR_FIRST_RATIO = 1.6;

/**
 * Thin or full SVD of a column-major m×n matrix with m ≥ n. Returns column-major U (m×uCols),
 * S (n) and V (n×n), with a = U·diag(S)·Vᵀ.
 * @internal
 */
export function svdTall(
  a: Float64Array,
  m: number,
  n: number,
  full: boolean,
  fn = 'svd',
): { u: Float64Array; s: Float64Array; v: Float64Array; uCols: number } {
  if (!full && n > 0 && m >= QR_FIRST_RATIO * n) {
    // a = Q·R; R = Ur·S·Vᵀ; so U = Q·Ur. The n×n problem is much cheaper than the m×n one.
    const { q, r } = householderQr(a, m, n, false);
    const inner = svdTall(r, n, n, false, fn);
    const u = new Float64Array(m * n);
    for (let j = 0; j < n; j++) {
      for (let p = 0; p < n; p++) {
        const f = inner.u[j * n + p] as number;
        if (f === 0) continue;
        const qo = p * m;
        const uo = j * m;
        for (let i = 0; i < m; i++) u[uo + i] = (u[uo + i] as number) + f * (q[qo + i] as number);
      }
    }
    return { u, s: inner.s, v: inner.v, uCols: n };
  }
  const w = a;
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(n - 1, 0));
  const tauL = new Float64Array(n);
  const tauR = new Float64Array(n);
  const rv = new Float64Array(n * n); // column k holds the k-th right reflector at rows k+1.., with a leading 1
  const scratch = new Float64Array(m);
  for (let k = 0; k < n; k++) {
    // left reflector: zero column k below the diagonal
    const off = k * m + k;
    const left = makeReflector(w, off, m - k);
    tauL[k] = left.tau;
    d[k] = left.beta;
    w[off] = 1;
    applyReflectorLeft(w, off, m - k, left.tau, w, (k + 1) * m + k, m, n - k - 1);
    w[off] = left.beta;
    if (k < n - 1) {
      // right reflector: zero row k right of the superdiagonal
      const len = n - k - 1;
      const vo = k * n + k + 1;
      for (let j = 0; j < len; j++) rv[vo + j] = w[(k + 1 + j) * m + k] as number;
      const right = makeReflector(rv, vo, len);
      tauR[k] = right.tau;
      e[k] = right.beta;
      rv[vo] = 1;
      applyReflectorRight(rv.subarray(vo, vo + len), len, right.tau, w, m, k + 1, m - k - 1, k + 1, scratch);
    }
  }
  const uCols = full ? m : n;
  const u = accumulateReflectors(w, m, tauL, uCols);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let k = n - 2; k >= 0; k--) {
    const len = n - k - 1;
    applyReflectorLeft(rv, k * n + k + 1, len, tauR[k] as number, v, (k + 1) * n + k + 1, n, len);
  }
  bidiagonalSvd(d, e, u, m, v, n, fn);
  return { u, s: d, v, uCols };
}

/** @internal float64 SVD of a Matrix64. */
export function svd64(a: Matrix64, full: boolean, fn = 'svd'): Svd64 {
  assertFinite(a, fn);
  const { rows: m, cols: n } = a;
  if (m === 0 || n === 0) {
    if (full) throw new LinalgError(`${fn}: fullMatrices is not supported for an empty ${m}x${n} matrix`);
    return {
      U: { rows: m, cols: 0, data: new Float64Array(0) },
      S: new Float64Array(0),
      Vh: { rows: 0, cols: n, data: new Float64Array(0) },
    };
  }
  if (m >= n) {
    const { u, s, v, uCols } = svdTall(toColumnMajor(a), m, n, full, fn);
    // V is column-major n×n: its row-major reading is Vᵀ = Vh.
    return { U: fromColumnMajor(u, m, uCols), S: s, Vh: { rows: n, cols: n, data: v } };
  }
  // m < n: decompose aᵀ = U'·S·V'ᵀ, so a = V'·S·U'ᵀ. The row-major data of a is aᵀ in column-major.
  const { u, s, v, uCols } = svdTall(Float64Array.from(a.data), n, m, full, fn);
  // U = V' (column-major m×m → row-major), Vh = U'ᵀ: column-major U' (n×uCols) read row-major is U'ᵀ.
  return { U: fromColumnMajor(v, m, m), S: s, Vh: { rows: uCols, cols: n, data: u } };
}
