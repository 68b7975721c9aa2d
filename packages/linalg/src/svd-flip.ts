import { LinalgError } from './errors';
import type { Matrix64 } from './matrix64';

/**
 * Makes SVD signs deterministic, as scikit-learn's `svd_flip` (used by PEFT's IncrementalPCA):
 * with `uBasedDecision: true` (sklearn's default) the largest-magnitude entry of each column of U is
 * made positive; with `false` (what PEFT's EVA uses), of each row of Vh. The matching column of U
 * and row of Vh flip together, so `U·diag(S)·Vh` is unchanged. Ties go to the first index.
 * Returns new matrices; the inputs are not changed.
 *
 * @example
 * ```ts
 * const { U, Vh } = svdFlip(r.U, r.Vh, { uBasedDecision: false });
 * ```
 */
export function svdFlip(
  U: Matrix64,
  Vh: Matrix64,
  options: { uBasedDecision?: boolean } = {},
): { U: Matrix64; Vh: Matrix64 } {
  const k = Math.min(U.cols, Vh.rows);
  if (U.cols !== Vh.rows)
    throw new LinalgError(`svdFlip: U has ${U.cols} columns but Vh has ${Vh.rows} rows; they must match`);
  const u = Float64Array.from(U.data);
  const v = Float64Array.from(Vh.data);
  for (let i = 0; i < k; i++) {
    let best = 0;
    let bestAbs = -1;
    if (options.uBasedDecision ?? true) {
      for (let r = 0; r < U.rows; r++) {
        const x = Math.abs(u[r * U.cols + i] as number);
        if (x > bestAbs) {
          bestAbs = x;
          best = r * U.cols + i;
        }
      }
      if ((u[best] as number) >= 0) continue;
    } else {
      for (let c = 0; c < Vh.cols; c++) {
        const x = Math.abs(v[i * Vh.cols + c] as number);
        if (x > bestAbs) {
          bestAbs = x;
          best = i * Vh.cols + c;
        }
      }
      if ((v[best] as number) >= 0) continue;
    }
    for (let r = 0; r < U.rows; r++) u[r * U.cols + i] = -(u[r * U.cols + i] as number);
    for (let c = 0; c < Vh.cols; c++) v[i * Vh.cols + c] = -(v[i * Vh.cols + c] as number);
  }
  return { U: { rows: U.rows, cols: U.cols, data: u }, Vh: { rows: Vh.rows, cols: Vh.cols, data: v } };
}
