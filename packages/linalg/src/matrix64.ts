import * as tf from '@tensorflow/tfjs-core';
import { LinalgError } from './errors';

/**
 * A dense float64 matrix in row-major order: element (i, j) is `data[i * cols + j]`.
 * The f64 path of every function takes and returns these; it is the accuracy reference.
 */
export interface Matrix64 {
  rows: number;
  cols: number;
  data: Float64Array;
}

/**
 * Makes a Matrix64, from nested arrays or from row-major data.
 *
 * @example
 * ```ts
 * const a = matrix64([[1, 2], [3, 4]]);
 * const b = matrix64(2, 3, new Float64Array(6));
 * ```
 */
export function matrix64(rows: number[][]): Matrix64;
export function matrix64(rows: number, cols: number, data?: Float64Array | ArrayLike<number>): Matrix64;
export function matrix64(a: number | number[][], cols?: number, data?: Float64Array | ArrayLike<number>): Matrix64 {
  if (Array.isArray(a)) {
    const rows = a.length;
    const c = rows === 0 ? 0 : (a[0] as number[]).length;
    const out = new Float64Array(rows * c);
    a.forEach((row, i) => {
      if (row.length !== c)
        throw new LinalgError(
          `row ${i} has ${row.length} entries, row 0 has ${c}; every row must have the same length`,
        );
      out.set(row, i * c);
    });
    return { rows, cols: c, data: out };
  }
  const c = cols as number;
  if (!Number.isInteger(a) || !Number.isInteger(c) || a < 0 || c < 0)
    throw new LinalgError(`matrix shape [${a}, ${cols}] must be two non-negative integers`);
  if (data !== undefined && data.length !== a * c)
    throw new LinalgError(`a ${a}x${c} matrix needs ${a * c} values, got ${data.length}`);
  return { rows: a, cols: c, data: data === undefined ? new Float64Array(a * c) : Float64Array.from(data) };
}

/** True for a Matrix64 (as opposed to a tfjs tensor). */
export function isMatrix64(x: unknown): x is Matrix64 {
  return (
    typeof x === 'object' &&
    x !== null &&
    (x as Matrix64).data instanceof Float64Array &&
    typeof (x as Matrix64).rows === 'number'
  );
}

/** The identity, n×n. */
export function eye64(n: number): Matrix64 {
  const m = matrix64(n, n);
  for (let i = 0; i < n; i++) m.data[i * n + i] = 1;
  return m;
}

/** Transpose. */
export function transpose64(a: Matrix64): Matrix64 {
  const out = new Float64Array(a.rows * a.cols);
  for (let i = 0; i < a.rows; i++)
    for (let j = 0; j < a.cols; j++) out[j * a.rows + i] = a.data[i * a.cols + j] as number;
  return { rows: a.cols, cols: a.rows, data: out };
}

/**
 * Product `op(a)·op(b)` in float64, where op transposes when asked.
 *
 * @example
 * ```ts
 * const aTa = matmul64(a, a, { transposeA: true });
 * ```
 */
export function matmul64(
  a: Matrix64,
  b: Matrix64,
  options: { transposeA?: boolean; transposeB?: boolean } = {},
): Matrix64 {
  const A = options.transposeA ? transpose64(a) : a;
  const B = options.transposeB ? transpose64(b) : b;
  if (A.cols !== B.rows)
    throw new LinalgError(`cannot multiply ${A.rows}x${A.cols} by ${B.rows}x${B.cols}: inner dimensions differ`);
  const m = A.rows;
  const k = A.cols;
  const n = B.cols;
  const out = new Float64Array(m * n);
  const ad = A.data;
  const bd = B.data;
  for (let i = 0; i < m; i++) {
    const oi = i * n;
    for (let p = 0; p < k; p++) {
      const av = ad[i * k + p] as number;
      if (av === 0) continue;
      const bp = p * n;
      for (let j = 0; j < n; j++) out[oi + j] = (out[oi + j] as number) + av * (bd[bp + j] as number);
    }
  }
  return { rows: m, cols: n, data: out };
}

/** Throws a clear error when a matrix holds NaN or ±Inf: no decomposition of such input is meaningful. */
export function assertFinite(a: Matrix64, fn: string): void {
  const d = a.data;
  for (let i = 0; i < d.length; i++) {
    if (!Number.isFinite(d[i] as number)) {
      throw new LinalgError(
        `${fn}: input has ${d[i]} at (${Math.floor(i / a.cols)}, ${i % a.cols}); remove NaN and Inf values before decomposing`,
      );
    }
  }
}

/** {@link assertFinite} for a tensor, checked on its backend (the values are read only when one is not finite). */
export async function assertFiniteTensor(t: tf.Tensor2D, fn: string, dispose = false): Promise<void> {
  const ok = tf.tidy(() => tf.all(tf.isFinite(t)));
  const finite = (await ok.data())[0] === 1;
  ok.dispose();
  try {
    if (!finite) assertFinite(await tensorToMatrix64(t, fn), fn);
  } finally {
    if (dispose) t.dispose();
  }
}

/** Reads a 2-D tensor into float64 (through `await data()`, which every backend supports). */
export async function tensorToMatrix64(t: tf.Tensor, fn: string): Promise<Matrix64> {
  if (t.rank !== 2) throw new LinalgError(`${fn}: expected a 2-D tensor, got shape [${t.shape.join(', ')}]`);
  const values = await t.data();
  return { rows: t.shape[0] as number, cols: t.shape[1] as number, data: Float64Array.from(values as Float32Array) };
}

/** A float32 tensor holding a Matrix64. */
export function matrix64ToTensor(m: Matrix64): tf.Tensor2D {
  return tf.tensor2d(Float32Array.from(m.data), [m.rows, m.cols], 'float32');
}

/** Row-major → column-major copy (the decompositions work on contiguous columns). */
export function toColumnMajor(a: Matrix64): Float64Array {
  return transpose64(a).data;
}

/** Column-major (rows×cols) → row-major Matrix64. */
export function fromColumnMajor(cm: Float64Array, rows: number, cols: number): Matrix64 {
  return transpose64({ rows: cols, cols: rows, data: cm });
}
