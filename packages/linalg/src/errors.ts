/**
 * A linear-algebra input or computation problem: wrong shapes, NaN/Inf input, a matrix that is not
 * positive definite, or an iteration that hit its cap without converging.
 *
 * @example
 * ```ts
 * try { cholesky(a); } catch (e) { if (e instanceof LinalgError) console.error(e.message); }
 * ```
 */
export class LinalgError extends Error {
  override readonly name = 'LinalgError';
}
