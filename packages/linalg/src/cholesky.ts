import type * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';
import { type Matrix64, assertFinite, isMatrix64, matrix64ToTensor, tensorToMatrix64, transpose64 } from './matrix64';

function cholesky64(a: Matrix64): Matrix64 {
  if (a.rows !== a.cols) throw new LinalgError(`cholesky: expected a square matrix, got ${a.rows}x${a.cols}`);
  assertFinite(a, 'cholesky');
  const n = a.rows;
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    let s = a.data[j * n + j] as number;
    for (let k = 0; k < j; k++) s -= (l[j * n + k] as number) ** 2;
    if (!(s > 0)) {
      throw new LinalgError(
        `cholesky: the matrix is not positive definite (leading minor of order ${j + 1} is not positive, pivot ${s}); ` +
          'check that it is symmetric positive definite, or add a small multiple of the identity',
      );
    }
    const d = Math.sqrt(s);
    l[j * n + j] = d;
    for (let i = j + 1; i < n; i++) {
      let t = a.data[i * n + j] as number;
      for (let k = 0; k < j; k++) t -= (l[i * n + k] as number) * (l[j * n + k] as number);
      l[i * n + j] = t / d;
    }
  }
  return { rows: n, cols: n, data: l };
}

/**
 * Cholesky factor L (lower triangular, positive diagonal) with `a = L·Lᵀ`, as `torch.linalg.cholesky`.
 * Only the lower triangle of `a` is read. A matrix that is not positive definite is an error.
 *
 * @example
 * ```ts
 * const L = cholesky(matrix64([[4, 2], [2, 3]])); // [[2, 0], [1, 1.414…]]
 * ```
 */
export function cholesky(a: Matrix64): Matrix64;
export function cholesky(a: tf.Tensor2D): Promise<tf.Tensor2D>;
export function cholesky(a: Matrix64 | tf.Tensor2D): Matrix64 | Promise<tf.Tensor2D> {
  if (isMatrix64(a)) return cholesky64(a);
  return tensorToMatrix64(a, 'cholesky').then((m) => matrix64ToTensor(cholesky64(m)));
}

/** Options for {@link solveTriangular}. */
export interface SolveTriangularOptions {
  /** Whether `a` is upper (true) or lower (false) triangular; the other triangle is ignored. */
  upper: boolean;
  /** true (default): solve `a·x = b`; false: solve `x·a = b` (torch's `left`). */
  left?: boolean;
  /** Assume a unit diagonal. Default false. */
  unitriangular?: boolean;
}

function solve64(a: Matrix64, b: Matrix64, o: SolveTriangularOptions): Matrix64 {
  const n = a.rows;
  if (a.rows !== a.cols) throw new LinalgError(`solveTriangular: a must be square, got ${a.rows}x${a.cols}`);
  const left = o.left ?? true;
  if (left ? b.rows !== n : b.cols !== n) {
    throw new LinalgError(
      `solveTriangular: a is ${n}x${n} but b is ${b.rows}x${b.cols}; b needs ${n} ${left ? 'rows' : 'columns'}`,
    );
  }
  assertFinite(a, 'solveTriangular');
  assertFinite(b, 'solveTriangular');
  if (!o.unitriangular) {
    for (let i = 0; i < n; i++) {
      if (a.data[i * n + i] === 0)
        throw new LinalgError(`solveTriangular: a is singular (zero on the diagonal at ${i})`);
    }
  }
  // x·a = b  ⇔  aᵀ·xᵀ = bᵀ: solve the transposed system with the other triangle.
  if (!left) {
    return transpose64(
      solve64(transpose64(a), transpose64(b), { upper: !o.upper, left: true, unitriangular: o.unitriangular ?? false }),
    );
  }
  const m = b.cols;
  const x = Float64Array.from(b.data);
  const order = o.upper ? Array.from({ length: n }, (_, i) => n - 1 - i) : Array.from({ length: n }, (_, i) => i);
  for (const i of order) {
    const lo = o.upper ? i + 1 : 0;
    const hi = o.upper ? n : i;
    for (let k = lo; k < hi; k++) {
      const f = a.data[i * n + k] as number;
      if (f === 0) continue;
      for (let j = 0; j < m; j++) x[i * m + j] = (x[i * m + j] as number) - f * (x[k * m + j] as number);
    }
    if (!o.unitriangular) {
      const d = a.data[i * n + i] as number;
      for (let j = 0; j < m; j++) x[i * m + j] = (x[i * m + j] as number) / d;
    }
  }
  return { rows: n, cols: m, data: x };
}

/**
 * Solves a triangular system `a·x = b` (or `x·a = b` with `left: false`), as
 * `torch.linalg.solve_triangular(a, b, upper=…, left=…, unitriangular=…)`.
 *
 * @example
 * ```ts
 * const x = solveTriangular(L, b, { upper: false }); // L·x = b
 * ```
 */
export function solveTriangular(a: Matrix64, b: Matrix64, options: SolveTriangularOptions): Matrix64;
export function solveTriangular(a: tf.Tensor2D, b: tf.Tensor2D, options: SolveTriangularOptions): Promise<tf.Tensor2D>;
export function solveTriangular(
  a: Matrix64 | tf.Tensor2D,
  b: Matrix64 | tf.Tensor2D,
  options: SolveTriangularOptions,
): Matrix64 | Promise<tf.Tensor2D> {
  if (typeof options?.upper !== 'boolean')
    throw new LinalgError('solveTriangular: options.upper (true or false) is required, as in torch');
  if (isMatrix64(a) && isMatrix64(b)) return solve64(a, b, options);
  if (isMatrix64(a) || isMatrix64(b))
    throw new LinalgError('solveTriangular: pass two Matrix64s or two tensors, not one of each');
  return (async () =>
    matrix64ToTensor(
      solve64(await tensorToMatrix64(a, 'solveTriangular'), await tensorToMatrix64(b, 'solveTriangular'), options),
    ))();
}
