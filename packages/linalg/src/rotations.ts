/**
 * Rotates columns i and j of a column-major array with leading dimension ld:
 * (cᵢ, cⱼ) ← (c·cᵢ + s·cⱼ, −s·cᵢ + c·cⱼ). The Givens updates of U, V and eigenvector bases.
 */
export function rotateColumns(x: Float64Array, ld: number, i: number, j: number, c: number, s: number): void {
  const oi = i * ld;
  const oj = j * ld;
  for (let r = 0; r < ld; r++) {
    const a = x[oi + r] as number;
    const b = x[oj + r] as number;
    x[oi + r] = c * a + s * b;
    x[oj + r] = c * b - s * a;
  }
}

/** Double precision's machine epsilon, the convergence tolerance of the QR sweeps. */
export const EPS = 2 ** -52;

/** Swaps columns i and j of a column-major matrix with leading dimension `ld` (stored as rows of length ld). */
export function swapColumns(x: Float64Array, ld: number, i: number, j: number): void {
  for (let r = 0; r < ld; r++) {
    const t = x[i * ld + r] as number;
    x[i * ld + r] = x[j * ld + r] as number;
    x[j * ld + r] = t;
  }
}
