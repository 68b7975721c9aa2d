/**
 * The float32 SVD of large tensors on the active backend: a blocked Householder QR first when the
 * matrix is much taller than wide (as LAPACK's gesdd), a blocked bidiagonalisation, the bidiagonal
 * problem by divide and conquer (values in float64, vectors joined on the backend), then the vectors
 * brought back through the reflectors by matrix products.
 */
import * as tf from '@tensorflow/tfjs-core';
import { bidiagonalDc } from './bidiagonal-dc';
import { type Bidiagonal, type BlockedOptions, bidiagonalize } from './bidiagonalize';
import { type ReflectorBlock, applyBlock, applyBlockRight, joinBlocks } from './block-reflectors';
import { type LongRunOptions, checkpoints } from './long-run';
import { householderFactor } from './householder';
import { readBlock, subBlock } from './tensor-blocks';

/** Below this aspect ratio a tall matrix is bidiagonalised directly; above it, QR first. */
const QR_FIRST_RATIO = 1.6;

/**
 * Householder QR of one column-major `rows × b` panel `p` (overwritten): R's rows k … k + b − 1 of the
 * panel's columns go into `r` (n × n, row-major), and the reflectors come back as unit lower vectors
 * `v` (column-major) with their `taus`.
 */
function factorPanel(
  p: Float64Array,
  rows: number,
  b: number,
  r: Float64Array,
  n: number,
  k: number,
): { v: Float32Array; taus: Float64Array } {
  const { taus } = householderFactor(p, rows, b);
  const v = new Float32Array(rows * b);
  for (let i = 0; i < b; i++) {
    for (let q = 0; q < i; q++) r[(k + q) * n + k + i] = p[i * rows + q] as number;
    r[(k + i) * n + k + i] = p[i * rows + i] as number;
    v[i * rows + i] = 1;
    for (let q = i + 1; q < rows; q++) v[i * rows + q] = p[i * rows + q] as number;
  }
  return { v, taus };
}

/**
 * Blocked Householder QR of a tall m×n tensor: R (n×n, row-major float64) and Q as reflector blocks.
 * @internal
 */
export async function qrBlocked(
  a: tf.Tensor2D,
  options: BlockedOptions = {},
): Promise<{ r: Float64Array; blocks: ReflectorBlock[] }> {
  const [m, n] = a.shape;
  const nb = options.block ?? 32;
  const r = new Float64Array(n * n);
  const blocks: ReflectorBlock[] = [];
  let t: tf.Tensor2D = a;
  try {
    for (let k = 0; k < n; ) {
      const rows = m - k;
      const cols = n - k;
      const b = Math.min(nb, cols);
      const p = await readBlock(t, 0, 0, rows, b, true); // column-major rows×b
      const { v, taus } = factorPanel(p, rows, b, r, n, k);
      blocks.push({ offset: k, rows, v, taus });
      if (b < cols) {
        const rest = subBlock(t, 0, b, rows, cols - b);
        const updated = await applyBlock(rest, { offset: 0, rows, v, taus }, true);
        const tv = await readBlock(updated, 0, 0, b, cols - b);
        for (let i = 0; i < b; i++)
          for (let j = 0; j < cols - b; j++) r[(k + i) * n + k + b + j] = tv[i * (cols - b) + j] as number;
        const next = subBlock(updated, b, 0, rows - b, cols - b);
        updated.dispose();
        if (t !== a) t.dispose();
        t = next;
      }
      k += b;
      await options.between?.(k, n);
    }
  } finally {
    if (t !== a) t.dispose();
  }
  return { r, blocks };
}

/**
 * The same QR of A = wᵀ from w itself (n×m, m ≥ n), as an LQ factorisation w = L·Q with the same
 * reflectors: the panel's columns of A are rows of w (contiguous reads), and every trailing update
 * multiplies by the reflectors on the right ({@link applyBlockRight}), the cheap form on wasm.
 * @internal
 */
export async function lqBlocked(
  w: tf.Tensor2D,
  options: BlockedOptions = {},
): Promise<{ r: Float64Array; blocks: ReflectorBlock[] }> {
  const [n, m] = w.shape;
  const nb = options.block ?? 32;
  const r = new Float64Array(n * n);
  const blocks: ReflectorBlock[] = [];
  let t: tf.Tensor2D = w; // (n − k) × (m − k): Aᵀ's trailing block
  try {
    for (let k = 0; k < n; ) {
      const rows = m - k;
      const cols = n - k;
      const b = Math.min(nb, cols);
      const p = await readBlock(t, 0, 0, b, rows); // row-major b×rows = A's panel, column-major
      const { v, taus } = factorPanel(p, rows, b, r, n, k);
      blocks.push({ offset: k, rows, v, taus });
      if (b < cols) {
        const rest = subBlock(t, b, 0, cols - b, rows);
        const updated = await applyBlockRight(rest, { offset: 0, rows, v, taus }, true);
        const tv = await readBlock(updated, 0, 0, cols - b, b); // (cols−b)×b: R's rows k..k+b, transposed
        for (let i = 0; i < b; i++)
          for (let j = 0; j < cols - b; j++) r[(k + i) * n + k + b + j] = tv[j * b + i] as number;
        const next = subBlock(updated, 0, b, cols - b, rows - b);
        updated.dispose();
        if (t !== w) t.dispose();
        t = next;
      }
      k += b;
      await options.between?.(k, n);
    }
  } finally {
    if (t !== w) t.dispose();
  }
  return { r, blocks };
}

/** C (rows×cols) padded with zero rows (or, with `identity`, the identity's) to `to` rows. */
function padRows(c: tf.Tensor2D, to: number, identity: boolean): tf.Tensor2D {
  const [rows, cols] = c.shape;
  if (rows === to) return c;
  const out = tf.tidy(() => {
    if (!identity) return tf.concat([c, tf.zeros([to - rows, cols])], 0);
    // blockdiag(C, I)
    const top = tf.concat([c, tf.zeros([rows, to - cols])], 1);
    const bottom = tf.concat([tf.zeros([to - rows, cols]), tf.eye(to - rows, to - cols)], 1);
    return tf.concat([top, bottom], 0);
  }) as tf.Tensor2D;
  c.dispose();
  return out;
}

/** The same padding on D = Cᵀ (cols×rows): to Cᵀ padded to `to` columns (blockdiag(Cᵀ, I) with `identity`). */
function padCols(d: tf.Tensor2D, to: number, identity: boolean): tf.Tensor2D {
  const [cols, rows] = d.shape;
  if (rows === to) return d;
  const out = tf.tidy(() => {
    const top = tf.concat([d, tf.zeros([cols, to - rows])], 1);
    if (!identity) return top;
    const bottom = tf.concat([tf.zeros([to - cols, rows]), tf.eye(to - cols, to - rows)], 1);
    return tf.concat([top, bottom], 0);
  }) as tf.Tensor2D;
  d.dispose();
  return out;
}

/** Tensors a computation holds; whatever is still held when it ends (or throws) is disposed. @internal */
export class Held {
  private readonly set = new Set<tf.Tensor>();
  take<T extends tf.Tensor>(t: T): T {
    this.set.add(t);
    return t;
  }
  /** t leaves the set: disposed already (by an op that consumes it) or handed to the caller. */
  release(t: tf.Tensor): void {
    this.set.delete(t);
  }
  dispose(): void {
    tf.dispose([...this.set]);
    this.set.clear();
  }
}

/** C ← B₀·B₁·…·C for the blocks, last first; C and each intermediate stay held. @internal */
export async function applyAll(
  c: tf.Tensor2D,
  blocks: ReflectorBlock[],
  held: Held,
  step: () => Promise<void>,
): Promise<tf.Tensor2D> {
  let out = c;
  for (let i = blocks.length - 1; i >= 0; i--) {
    const next = await applyBlock(out, blocks[i] as ReflectorBlock, false);
    held.release(out);
    out = held.take(next);
    await step();
  }
  return out;
}

/** Dᵀ ← B₀·B₁·…·Dᵀ (D = Cᵀ held transposed), last block first; D and each intermediate stay held. */
async function applyAllRight(
  d: tf.Tensor2D,
  blocks: ReflectorBlock[],
  held: Held,
  step: () => Promise<void>,
): Promise<tf.Tensor2D> {
  let out = d;
  for (let i = blocks.length - 1; i >= 0; i--) {
    const next = await applyBlockRight(out, blocks[i] as ReflectorBlock, false);
    held.release(out);
    out = held.take(next);
    await step();
  }
  return out;
}

/** Options of the blocked SVD. */
export interface BlockedSvdOptions extends LongRunOptions {
  fullMatrices?: boolean;
  /** Panel width. Default 32. */
  block?: number;
  /** Reflectors per block when the vectors are brought back. Default 128. */
  applyWidth?: number;
}

/**
 * SVD of a 2-D float32 tensor on the active backend. U and Vh are thin unless `fullMatrices`.
 * @internal
 */
export async function svdBlocked(
  input: tf.Tensor2D,
  options: BlockedSvdOptions = {},
): Promise<{ U: tf.Tensor2D; S: tf.Tensor1D; Vh: tf.Tensor2D }> {
  const check = checkpoints(options);
  const full = options.fullMatrices ?? false;
  const [m0, n0] = input.shape;
  const wide = m0 < n0;
  const held = new Held();
  const block = options.block ?? 32;
  try {
    const [m, n] = wide ? [n0, m0] : [m0, n0];
    // on wasm the reflectors are applied from the right to transposes (see applyBlockRight)
    const byRight = tf.getBackend() === 'wasm';
    const tall = () => (wide ? held.take(tf.transpose(input) as tf.Tensor2D) : input);
    let qrBlocks: ReflectorBlock[] = [];
    let bd: Bidiagonal;
    if (m >= QR_FIRST_RATIO * n) {
      const between = (done: number, total: number) => check('qr', done, total);
      let qrd: Awaited<ReturnType<typeof qrBlocked>>;
      if (byRight) {
        const w = wide ? input : held.take(tf.transpose(input) as tf.Tensor2D);
        qrd = await lqBlocked(w, { block, between });
        if (w !== input) {
          held.release(w);
          w.dispose();
        }
      } else qrd = await qrBlocked(tall(), { block, between });
      qrBlocks = qrd.blocks;
      const r = held.take(tf.tensor2d(Float32Array.from(qrd.r), [n, n]));
      bd = await bidiagonalize(r, { block, between: (done, total) => check('bidiagonalize', done, total) });
    } else {
      bd = await bidiagonalize(tall(), { block, between: (done, total) => check('bidiagonalize', done, total) });
    }
    let joined = 0;
    const dc = await bidiagonalDc(bd.d, bd.e, {
      between: async (rows) => {
        joined += rows;
        await check('solve', joined, Math.ceil(n * Math.log2(Math.max(n, 2))));
      },
    });
    const v0 = dc.vectors;
    const u0 = v0.u as tf.Tensor2D | Float64Array; // left vectors were asked for
    const ub = held.take(v0.tensors ? (u0 as tf.Tensor2D) : tf.tensor2d(Float32Array.from(u0 as Float64Array), [n, n]));
    const wb = held.take(v0.tensors ? v0.w : tf.tensor2d(Float32Array.from(v0.w), [n, n]));
    // the panels' reflectors applied in blocks of up to 128: fewer passes over U and V
    const width = Math.max(options.applyWidth ?? 128, block);
    const qBlocks = joinBlocks(bd.left, width);
    const pBlocks = joinBlocks(bd.right, width);
    qrBlocks = joinBlocks(qrBlocks, width);
    const total = qBlocks.length + pBlocks.length + qrBlocks.length;
    let done = 0;
    const step = () => check('vectors', ++done, total);
    // U = Q_qr·blockdiag(Q_bd·[U_B; 0], I), V = P·W_B
    const grow = (c: tf.Tensor2D, rows: number, identity: boolean) => {
      const out = padRows(c, rows, identity);
      if (out !== c) {
        held.release(c);
        held.take(out);
      }
      return out;
    };
    if (byRight) {
      // Uᵀ and Vᵀ: each block multiplies them from the right
      const growT = (d: tf.Tensor2D, cols: number, identity: boolean) => {
        const out = padCols(d, cols, identity);
        if (out !== d) {
          held.release(d);
          held.take(out);
        }
        return out;
      };
      const flip = (x: tf.Tensor2D) => {
        const out = held.take(tf.transpose(x) as tf.Tensor2D);
        held.release(x);
        x.dispose();
        return out;
      };
      let ut = await applyAllRight(growT(flip(ub), bd.m, full && !qrBlocks.length), qBlocks, held, step);
      if (qrBlocks.length) ut = await applyAllRight(growT(ut, m, full), qrBlocks, held, step);
      const vt = await applyAllRight(flip(wb), pBlocks, held, step);
      // tall: U = (Uᵀ)ᵀ, Vh = Vᵀ; wide (decomposed transposed): U = (Vᵀ)ᵀ, Vh = Uᵀ
      const [leftT, vh] = wide ? [vt, ut] : [ut, vt];
      held.release(vh);
      return { U: tf.transpose(leftT) as tf.Tensor2D, S: tf.tensor1d(Float32Array.from(dc.sigma)), Vh: vh };
    }
    let u = await applyAll(grow(ub, bd.m, full && !qrBlocks.length), qBlocks, held, step);
    if (qrBlocks.length) u = await applyAll(grow(u, m, full), qrBlocks, held, step);
    const v = await applyAll(wb, pBlocks, held, step);
    const S = tf.tensor1d(Float32Array.from(dc.sigma));
    // a wide input was decomposed transposed: aᵀ = U·S·Vᵀ, so a = V·S·Uᵀ
    const [left, right] = wide ? [v, u] : [u, v];
    held.release(left);
    return { U: left, S, Vh: tf.transpose(right) as tf.Tensor2D };
  } finally {
    held.dispose();
  }
}
