/**
 * Sub-blocks of 2-D tensors. tfjs-wasm's slice copies the whole input to JavaScript first (a 64 MiB
 * read for a 4096² matrix, however small the block); its gather runs in WebAssembly and touches only
 * the block. So on wasm blocks are gathered, elsewhere sliced.
 */
import * as tf from '@tensorflow/tfjs-core';

function gatherRange(t: tf.Tensor2D, start: number, count: number, axis: 0 | 1): tf.Tensor2D {
  return tf.tidy(() => tf.gather(t, tf.range(start, start + count, 1, 'int32'), axis)) as tf.Tensor2D;
}

/**
 * Rows r0.. and columns c0.. of t (`rows` × `cols`), as a new tensor.
 * @internal
 */
export function subBlock(t: tf.Tensor2D, r0: number, c0: number, rows: number, cols: number): tf.Tensor2D {
  const [m, n] = t.shape;
  if (r0 === 0 && c0 === 0 && rows === m && cols === n) return tf.clone(t);
  if (tf.getBackend() !== 'wasm') return tf.slice(t, [r0, c0], [rows, cols]);
  if (c0 === 0 && cols === n) return gatherRange(t, r0, rows, 0);
  if (r0 === 0 && rows === m) return gatherRange(t, c0, cols, 1);
  return tf.tidy(() => {
    // the smaller intermediate first
    if ((m - rows) * n > (n - cols) * m) return gatherRange(gatherRange(t, r0, rows, 0), c0, cols, 1);
    return gatherRange(gatherRange(t, c0, cols, 1), r0, rows, 0);
  });
}
