/**
 * Singular values and vectors of a real upper-bidiagonal matrix by implicit-shift QR
 * (Golub–Kahan–Reinsch, as in Golub & Van Loan §8.6), rotating the columns of U and V along.
 * Column-major U (m×n) and V (n×n) are updated in place so that A = U·B·Vᵀ stays true.
 */
import { LinalgError } from './errors';
import { EPS, rotateColumns, swapColumns } from './rotations';

const TINY = 2 ** -966;

/**
 * Diagonalises the bidiagonal (d, e) in place: on return d holds the singular values, descending
 * and non-negative, and U (m×n) and V (n×n) are rotated and permuted to match. `maxSteps` caps the
 * QR steps; exceeding it is an error, never a hang.
 */
export function bidiagonalSvd(
  d: Float64Array,
  e: Float64Array,
  u: Float64Array | null,
  m: number,
  v: Float64Array | null,
  n: number,
  fn = 'svd',
): void {
  const maxSteps = 75 * n + 100;
  let steps = 0;
  let q = n - 1;
  while (q > 0) {
    // Negligible superdiagonals split the problem; test relative to their neighbours.
    for (let i = 0; i < q; i++) {
      if (Math.abs(e[i] as number) <= TINY + EPS * (Math.abs(d[i] as number) + Math.abs(d[i + 1] as number))) e[i] = 0;
    }
    while (q > 0 && e[q - 1] === 0) q--;
    if (q === 0) break;
    let p = q - 1;
    while (p > 0 && e[p - 1] !== 0) p--;
    if (++steps > maxSteps) {
      throw new LinalgError(
        `${fn}: the bidiagonal QR iteration did not converge in ${maxSteps} steps (block ${p}..${q} of ${n}); the input may be badly scaled`,
      );
    }

    // A zero on the diagonal: rotate its superdiagonal away instead of taking a QR step.
    let zeroAt = -1;
    for (let i = p; i <= q; i++) {
      const neighbours = (i > p ? Math.abs(e[i - 1] as number) : 0) + (i < q ? Math.abs(e[i] as number) : 0);
      if (Math.abs(d[i] as number) <= TINY + EPS * neighbours) {
        d[i] = 0;
        zeroAt = i;
        break;
      }
    }
    if (zeroAt >= 0 && zeroAt < q) {
      // chase e[i] along row i to the right with left rotations of rows (i, j)
      const i = zeroAt;
      let f = e[i] as number;
      e[i] = 0;
      for (let j = i + 1; j <= q && f !== 0; j++) {
        const r = Math.hypot(d[j] as number, f);
        const c = (d[j] as number) / r;
        const s = f / r;
        d[j] = r;
        if (j < q) {
          f = -s * (e[j] as number);
          e[j] = c * (e[j] as number);
        }
        if (u) rotateColumns(u, m, j, i, c, s);
      }
      continue;
    }
    if (zeroAt === q) {
      // chase e[q−1] up column q with right rotations of columns (j, q)
      let f = e[q - 1] as number;
      e[q - 1] = 0;
      for (let j = q - 1; j >= p && f !== 0; j--) {
        const r = Math.hypot(d[j] as number, f);
        const c = (d[j] as number) / r;
        const s = f / r;
        d[j] = r;
        if (j > p) {
          f = -s * (e[j - 1] as number);
          e[j - 1] = c * (e[j - 1] as number);
        }
        if (v) rotateColumns(v, n, j, q, c, s);
      }
      continue;
    }

    // Golub–Kahan step with the Wilkinson shift from the trailing 2×2 of BᵀB. The block is scaled
    // to unit size first so that squaring cannot overflow or underflow.
    let scale = 0;
    for (let i = p; i <= q; i++)
      scale = Math.max(scale, Math.abs(d[i] as number), i < q ? Math.abs(e[i] as number) : 0);
    const dq = (d[q] as number) / scale;
    const dq1 = (d[q - 1] as number) / scale;
    const eq1 = (e[q - 1] as number) / scale;
    const eq2 = q - 1 > p ? (e[q - 2] as number) / scale : 0;
    const t11 = dq1 * dq1 + eq2 * eq2;
    const t12 = dq1 * eq1;
    const t22 = dq * dq + eq1 * eq1;
    const half = (t11 - t22) / 2;
    const denom = half + (half >= 0 ? 1 : -1) * Math.hypot(half, t12);
    const mu = denom === 0 ? t22 : t22 - (t12 * t12) / denom;
    const dp = (d[p] as number) / scale;
    let y = dp * dp - mu;
    let z = dp * ((e[p] as number) / scale);
    for (let k = p; k < q; k++) {
      // right rotation of columns (k, k+1): zero z against y
      let r = Math.hypot(y, z);
      let c = r === 0 ? 1 : y / r;
      let s = r === 0 ? 0 : z / r;
      if (k > p) e[k - 1] = r * scale;
      const dk = d[k] as number;
      const ek = e[k] as number;
      const dk1 = d[k + 1] as number;
      const dkNew = c * dk + s * ek;
      const ekNew = c * ek - s * dk;
      const bulge = s * dk1;
      const dk1New = c * dk1;
      if (v) rotateColumns(v, n, k, k + 1, c, s);
      // left rotation of rows (k, k+1): zero the bulge below the diagonal
      r = Math.hypot(dkNew, bulge);
      c = r === 0 ? 1 : dkNew / r;
      s = r === 0 ? 0 : bulge / r;
      d[k] = r;
      e[k] = c * ekNew + s * dk1New;
      d[k + 1] = c * dk1New - s * ekNew;
      if (u) rotateColumns(u, m, k, k + 1, c, s);
      if (k < q - 1) {
        const ek1 = e[k + 1] as number;
        y = (e[k] as number) / scale;
        z = (s * ek1) / scale;
        e[k + 1] = c * ek1;
      }
    }
  }

  // Non-negative singular values (flip V's column), then descending order.
  for (let i = 0; i < n; i++) {
    if ((d[i] as number) < 0) {
      d[i] = -(d[i] as number);
      if (v) for (let r = 0; r < n; r++) v[i * n + r] = -(v[i * n + r] as number);
    }
  }
  for (let i = 0; i < n - 1; i++) {
    let best = i;
    for (let j = i + 1; j < n; j++) if ((d[j] as number) > (d[best] as number)) best = j;
    if (best !== i) {
      const t = d[i] as number;
      d[i] = d[best] as number;
      d[best] = t;
      if (u) swapColumns(u, m, i, best);
      if (v) swapColumns(v, n, i, best);
    }
  }
}
