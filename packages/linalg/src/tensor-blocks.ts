/**
 * Sub-blocks of 2-D float32 tensors, as tensors or read into float64 arrays.
 *
 * tfjs-wasm's slice first copies the whole input out of the WebAssembly heap (64 MiB for a 4096²
 * matrix, whatever the block), and its gather is slower still. On wasm the block is copied straight
 * from the heap (`typedArrayFromHeap`, the view its own kernels use); elsewhere tf.slice is used.
 */
import * as tf from '@tensorflow/tfjs-core';

interface HeapBackend {
  typedArrayFromHeap(t: tf.Tensor): Float32Array;
}

/** A view of a wasm tensor's memory, valid until the next allocation on that backend; null elsewhere. */
function heapView(t: tf.Tensor): Float32Array | null {
  if (t.dtype !== 'float32' || tf.getBackend() !== 'wasm') return null;
  const b = tf.backend() as unknown as Partial<HeapBackend>;
  return typeof b.typedArrayFromHeap === 'function' ? b.typedArrayFromHeap(t) : null;
}

/** Copies rows×cols of the row-major `src` (n columns) from (r0, c0) into `out`, row-major or column-major. */
function copyBlock(
  src: ArrayLike<number> & { subarray?: (a: number, b: number) => ArrayLike<number> },
  n: number,
  r0: number,
  c0: number,
  rows: number,
  cols: number,
  out: Float32Array | Float64Array,
  columnMajor: boolean,
): void {
  if (!columnMajor && src instanceof Float32Array && out instanceof Float32Array) {
    for (let i = 0; i < rows; i++) out.set(src.subarray((r0 + i) * n + c0, (r0 + i) * n + c0 + cols), i * cols);
    return;
  }
  for (let i = 0; i < rows; i++) {
    const o = (r0 + i) * n + c0;
    if (columnMajor) for (let j = 0; j < cols; j++) out[j * rows + i] = src[o + j] as number;
    else for (let j = 0; j < cols; j++) out[i * cols + j] = src[o + j] as number;
  }
}

/**
 * Rows r0.. and columns c0.. of t (`rows` × `cols`), as a new tensor.
 * @internal
 */
export function subBlock(t: tf.Tensor2D, r0: number, c0: number, rows: number, cols: number): tf.Tensor2D {
  const [m, n] = t.shape;
  if (r0 === 0 && c0 === 0 && rows === m && cols === n) return tf.clone(t);
  const view = heapView(t);
  if (!view) return tf.slice(t, [r0, c0], [rows, cols]);
  const out = new Float32Array(rows * cols);
  copyBlock(view, n, r0, c0, rows, cols, out, false);
  return tf.tensor2d(out, [rows, cols]);
}

/**
 * Rows r0.. and columns c0.. of t read into float64, row-major or (with `columnMajor`) column-major.
 * @internal
 */
export async function readBlock(
  t: tf.Tensor2D,
  r0: number,
  c0: number,
  rows: number,
  cols: number,
  columnMajor = false,
): Promise<Float64Array> {
  const [m, n] = t.shape;
  const out = new Float64Array(rows * cols);
  const view = heapView(t);
  if (view) {
    copyBlock(view, n, r0, c0, rows, cols, out, columnMajor);
    return out;
  }
  const whole = r0 === 0 && c0 === 0 && rows === m && cols === n;
  const block = whole ? t : tf.slice(t, [r0, c0], [rows, cols]);
  const values = (await block.data()) as Float32Array;
  if (!whole) block.dispose();
  copyBlock(values, cols, 0, 0, rows, cols, out, columnMajor);
  return out;
}
