/**
 * Blocks of Householder reflectors on the active backend, in the compact WY form of Schreiber & Van
 * Loan (LAPACK's dlarft/dlarfb): H₀·H₁·…·H₍b₋₁₎ = I − V·T·Vᵀ, with V the reflectors' vectors as columns
 * (unit first entries) and T upper triangular. Applying a block is three matrix products, so that
 * forming U = Q·U_B after a bidiagonalisation is level-3 work on the backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { subBlock } from './tensor-blocks';

/** b reflectors acting on rows `offset..offset+rows` of what they apply to. */
export interface ReflectorBlock {
  offset: number;
  rows: number;
  /** rows×b, column-major: column i is vᵢ (zero above its unit entry) */
  v: Float32Array;
  taus: Float64Array;
}

/**
 * T of the compact WY form for columns v (rows×b, column-major) and their τ, by dlarft's
 * recurrence T[0:i, i] = −τᵢ·T[0:i, 0:i]·(V[:, 0:i]ᵀ·vᵢ), from the Gram matrix VᵀV (b×b, row-major).
 */
export function wyFactor(gram: Float64Array, taus: Float64Array): Float64Array {
  const b = taus.length;
  const t = new Float64Array(b * b);
  for (let i = 0; i < b; i++) {
    const tau = taus[i] as number;
    t[i * b + i] = tau;
    if (tau === 0) continue;
    for (let r = 0; r < i; r++) {
      let s = 0;
      for (let c = r; c < i; c++) s += (t[r * b + c] as number) * (gram[c * b + i] as number);
      t[r * b + i] = -tau * s;
    }
  }
  return t;
}

/**
 * Consecutive blocks (each starting where the previous one's reflectors end, as the panels of one
 * factorisation do) joined into blocks of up to `width` reflectors: fewer, larger products when they
 * are applied. The later blocks' vectors are zero-padded at the top.
 * @internal
 */
export function joinBlocks(blocks: ReflectorBlock[], width: number): ReflectorBlock[] {
  const out: ReflectorBlock[] = [];
  let i = 0;
  while (i < blocks.length) {
    const first = blocks[i] as ReflectorBlock;
    let j = i;
    let cols = 0;
    while (j < blocks.length && (cols === 0 || cols + (blocks[j] as ReflectorBlock).taus.length <= width)) {
      cols += (blocks[j] as ReflectorBlock).taus.length;
      j++;
    }
    if (j === i + 1) {
      out.push(first);
      i = j;
      continue;
    }
    const rows = first.rows;
    const v = new Float32Array(rows * cols);
    const taus = new Float64Array(cols);
    let c = 0;
    for (let q = i; q < j; q++) {
      const blk = blocks[q] as ReflectorBlock;
      const shift = blk.offset - first.offset;
      const b = blk.taus.length;
      for (let t = 0; t < b; t++) v.set(blk.v.subarray(t * blk.rows, (t + 1) * blk.rows), (c + t) * rows + shift);
      taus.set(blk.taus, c);
      c += b;
    }
    out.push({ offset: first.offset, rows, v, taus });
    i = j;
  }
  return out;
}

/** The block's V as a row-major rows×b tensor, Vᵀ as b×rows, and T (or Tᵀ) as b×b. */
export async function blockTensors(
  block: ReflectorBlock,
  transposeT: boolean,
): Promise<{ v: tf.Tensor2D; vt: tf.Tensor2D; t: tf.Tensor2D }> {
  const { rows, v } = block;
  const b = block.taus.length;
  const vt = tf.tensor2d(v, [b, rows]); // column-major rows×b is row-major b×rows
  const vr = tf.transpose(vt) as tf.Tensor2D;
  const g = tf.matMul(vt, vr);
  const gram = Float64Array.from((await g.data()) as Float32Array);
  g.dispose();
  const t = wyFactor(gram, block.taus);
  const tt = new Float32Array(b * b);
  for (let i = 0; i < b; i++)
    for (let j = 0; j < b; j++) tt[i * b + j] = (transposeT ? t[j * b + i] : t[i * b + j]) as number;
  return { v: vr, vt, t: tf.tensor2d(tt, [b, b]) };
}

/**
 * C ← (I − V·T·Vᵀ)·C (`transpose` false: the product of the reflectors, H₀·…·H₍b₋₁₎) or
 * (I − V·Tᵀ·Vᵀ)·C (true: its transpose) on rows offset.. of C. Returns a new tensor; C is disposed.
 */
export async function applyBlock(c: tf.Tensor2D, block: ReflectorBlock, transpose: boolean): Promise<tf.Tensor2D> {
  const { v, vt, t } = await blockTensors(block, transpose);
  const [rowsC, cols] = c.shape;
  const { offset, rows } = block;
  const out = tf.tidy(() => {
    const lower = offset === 0 && rows === rowsC ? c : subBlock(c, offset, 0, rows, cols);
    const updated = tf.sub(lower, tf.matMul(v, tf.matMul(t, tf.matMul(vt, lower))));
    const parts: tf.Tensor2D[] = [];
    if (offset > 0) parts.push(subBlock(c, 0, 0, offset, cols));
    parts.push(updated as tf.Tensor2D);
    if (offset + rows < rowsC) parts.push(subBlock(c, offset + rows, 0, rowsC - offset - rows, cols));
    return (parts.length === 1 ? parts[0] : tf.concat(parts, 0)) as tf.Tensor2D;
  });
  tf.dispose([v, vt, t, c]);
  return out;
}

/**
 * The same product on the transpose: with D = Cᵀ, D ← D·(I − V·Tᵀ·Vᵀ) (`transpose` false: Cᵀ of
 * H₀·…·H₍b₋₁₎·C) or D·(I − V·T·Vᵀ) (true), on columns offset.. of D. On wasm this is the cheaper form:
 * XNNPACK packs the right operand of every product, and here that is V or Vᵀ (rows×b), not the whole
 * matrix. Returns a new tensor; D is disposed.
 */
export async function applyBlockRight(d: tf.Tensor2D, block: ReflectorBlock, transpose: boolean): Promise<tf.Tensor2D> {
  const { v, vt, t } = await blockTensors(block, !transpose);
  const [rowsD, colsD] = d.shape;
  const { offset, rows } = block;
  const out = tf.tidy(() => {
    const part = offset === 0 && rows === colsD ? d : subBlock(d, 0, offset, rowsD, rows);
    const updated = tf.sub(part, tf.matMul(tf.matMul(tf.matMul(part, v), t), vt));
    const parts: tf.Tensor2D[] = [];
    if (offset > 0) parts.push(subBlock(d, 0, 0, rowsD, offset));
    parts.push(updated as tf.Tensor2D);
    if (offset + rows < colsD) parts.push(subBlock(d, 0, offset + rows, rowsD, colsD - offset - rows));
    return (parts.length === 1 ? parts[0] : tf.concat(parts, 1)) as tf.Tensor2D;
  });
  tf.dispose([v, vt, t, d]);
  return out;
}
