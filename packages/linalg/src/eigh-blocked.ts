/**
 * The float32 symmetric eigendecomposition of large tensors on the active backend: blocked Householder
 * tridiagonalisation, then the tridiagonal problem in float64 through the bidiagonal divide and conquer
 * (T + c·I = Bᵀ·B by Cholesky, c a Gershgorin shift that makes it positive definite, so that the
 * eigenvectors are B's right singular vectors and the eigenvalues σ² − c), then the vectors brought back
 * through the reflectors by matrix products.
 */
import * as tf from '@tensorflow/tfjs-core';
import { bidiagonalDc } from './bidiagonal-dc';
import { joinBlocks } from './block-reflectors';
import { type LongRunOptions, checkpoints } from './long-run';
import { Held, applyAll } from './svd-blocked';
import { tridiagonalize } from './tridiagonalize';

/**
 * Eigenvalues (ascending) and eigenvectors (columns) of the symmetric matrix whose lower triangle is
 * that of `a`, on the active backend.
 * @internal
 */
export async function eighBlocked(
  a: tf.Tensor2D,
  options: LongRunOptions & { block?: number } = {},
): Promise<{ values: tf.Tensor1D; vectors: tf.Tensor2D }> {
  const check = checkpoints(options);
  const n = a.shape[0];
  const held = new Held();
  try {
    // the lower triangle mirrored, as torch.linalg.eigh reads it (UPLO='L')
    const sym = held.take(
      tf.tidy(() => {
        const lower = tf.linalg.bandPart(a, -1, 0);
        return tf.add(lower, tf.transpose(tf.sub(lower, tf.linalg.bandPart(a, 0, 0))));
      }) as tf.Tensor2D,
    );
    const tri = await tridiagonalize(sym, {
      block: options.block,
      between: (done, total) => check('tridiagonalize', done, total),
    });
    held.release(sym);
    sym.dispose();
    const { d, e } = tri;
    // Gershgorin: every eigenvalue of T lies in [min(dᵢ − |eᵢ₋₁| − |eᵢ|), …]; shift past it, with a margin
    let low = Number.POSITIVE_INFINITY;
    let scale = 0;
    for (let i = 0; i < n; i++) {
      const r = (i > 0 ? Math.abs(e[i - 1] as number) : 0) + (i < n - 1 ? Math.abs(e[i] as number) : 0);
      low = Math.min(low, (d[i] as number) - r);
      scale = Math.max(scale, Math.abs(d[i] as number) + r);
    }
    if (scale === 0) {
      return { values: tf.zeros([n]) as tf.Tensor1D, vectors: tf.eye(n) as tf.Tensor2D };
    }
    const c = Math.max(0, -low) + 0.01 * scale;
    // T + c·I = L·Lᵀ, L lower bidiagonal; B = Lᵀ is upper bidiagonal with BᵀB = T + c·I
    const bd = new Float64Array(n);
    const be = new Float64Array(Math.max(n - 1, 0));
    let prev = 0;
    for (let i = 0; i < n; i++) {
      const pivot = (d[i] as number) + c - (i > 0 ? prev * prev : 0);
      const l = Math.sqrt(Math.max(pivot, Number.MIN_VALUE));
      bd[i] = l;
      if (i < n - 1) {
        prev = (e[i] as number) / l;
        be[i] = prev;
      }
    }
    let joined = 0;
    const dc = await bidiagonalDc(bd, be, {
      left: false,
      between: async (rows) => {
        joined += rows;
        await check('solve', joined, Math.ceil(n * Math.log2(Math.max(n, 2))));
      },
    });
    // σ descending gives the eigenvalues descending: reverse both
    const w0 = dc.vectors.w;
    const wDesc = held.take(w0 instanceof Float64Array ? tf.tensor2d(Float32Array.from(w0), [n, n]) : w0);
    const z = held.take(tf.reverse(wDesc, 1) as tf.Tensor2D);
    held.release(wDesc);
    wDesc.dispose();
    const blocks = joinBlocks(tri.blocks, 128);
    let done = 0;
    const vectors = await applyAll(z, blocks, held, () => check('vectors', ++done, blocks.length));
    const values = new Float32Array(n);
    for (let i = 0; i < n; i++) values[i] = (dc.sigma[n - 1 - i] as number) ** 2 - c;
    held.release(vectors);
    return { values: tf.tensor1d(values), vectors };
  } finally {
    held.dispose();
  }
}
