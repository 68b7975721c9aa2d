import * as tf from '@tensorflow/tfjs-core';
import { matmulNT, matmulTN } from './ops';

/** Options of {@link scaledDotProductAttention}. */
export interface AttentionOptions {
  /**
   * Causal masking: the T queries are the last T of the S key positions (S − T earlier positions
   * come from a KV cache) and each attends to the keys at or before its own position.
   */
  causal?: boolean;
  /** `[B, S]`: non-zero where a key may be attended, 0 where it may not (padding). */
  keyMask?: tf.Tensor;
  /** Multiplies the scores; default 1/√D. */
  scale?: number;
  /**
   * Query positions per block. Default: as many as keep one block's scores (for the query heads
   * that share a key head) under 4M elements. Only memory and speed depend on it, not the result.
   */
  blockSize?: number;
}

const FLOAT32_MIN = -3.4028234663852886e38;
const BLOCK_ELEMENTS = 2 ** 22;

interface Dims {
  b: number;
  h: number;
  t: number;
  d: number;
  hkv: number;
  s: number;
  rep: number;
  offset: number;
  causal: boolean;
  blocks: [number, number][];
  scale: number;
}

/** The additive mask of one block of query rows [t0, t1) for batch row `b`: 0 where allowed, the float32 minimum elsewhere. */
function blockMask(
  dims: Dims,
  keep: tf.Tensor | null,
  b: number,
  t0: number,
  t1: number,
  kEnd: number,
): tf.Tensor | null {
  if (!dims.causal && !keep) return null;
  return tf.tidy(() => {
    let allowed: tf.Tensor | null = null;
    if (dims.causal) {
      // query t (at position offset + t) sees keys j ≤ offset + t
      const pos = tf.reshape(tf.range(dims.offset + t0, dims.offset + t1, 1, 'int32'), [t1 - t0, 1]);
      allowed = tf.cast(tf.lessEqual(tf.reshape(tf.range(0, kEnd, 1, 'int32'), [1, kEnd]), pos), 'float32');
    }
    if (keep) {
      const row = tf.slice(keep, [b, 0], [1, kEnd]);
      allowed = allowed ? tf.mul(allowed, row) : row;
    }
    // one minimum where either mask forbids, as transformers' eager attention adds it
    return tf.mul(tf.sub(1, allowed as tf.Tensor), FLOAT32_MIN);
  });
}

/** Scores of one block, masked: [rep·bq, kEnd]. */
function blockScores(
  dims: Dims,
  qs: tf.Tensor,
  kb: tf.Tensor,
  mask: tf.Tensor | null,
  bq: number,
  kEnd: number,
): tf.Tensor {
  const s = matmulNT(qs, kb);
  if (!mask) return s;
  // the rep heads' rows share the mask: add it to [rep, bq, kEnd] by broadcasting
  return tf.reshape(tf.add(tf.reshape(s, [dims.rep, bq, kEnd]), mask), [dims.rep * bq, kEnd]);
}

function slice2d(x: tf.Tensor, b: number, head0: number, heads: number, t0: number, t1: number, d: number): tf.Tensor {
  return tf.reshape(tf.slice(x, [b, head0, t0, 0], [1, heads, t1 - t0, d]), [heads * (t1 - t0), d]);
}

function addInto(acc: tf.Tensor | null, x: tf.Tensor): tf.Tensor {
  if (!acc) return x;
  const sum = tf.add(acc, x);
  acc.dispose();
  x.dispose();
  return sum;
}

/**
 * Softmax attention, `softmax(q·kᵀ·scale + mask)·v`, for queries `[B, H, T, D]` and keys and values
 * `[B, Hkv, S, D]`, where H is a multiple of Hkv (grouped-query attention: query head i uses key head
 * ⌊i / (H/Hkv)⌋, as transformers' `repeat_kv`). Masking follows transformers' eager attention: the
 * float32 minimum is added where a query may not attend. Returns `[B, H, T, D]`.
 *
 * Computed in blocks of query positions, with its own gradient (the FlashAttention scheme): the
 * backward pass keeps q, k, v, the output and two numbers per query row, and recomputes each block's
 * probabilities, so memory grows with T·D rather than with the T·S score matrices; causal blocks
 * skip the keys after their last query. Products are 2-d (one key head at a time), the form the
 * wasm backend's XNNPACK runs fast.
 *
 * @example
 * ```ts
 * const out = scaledDotProductAttention(q, k, v, { causal: true }); // q: [1, 9, 512, 64], k, v: [1, 3, 512, 64]
 * ```
 */
export function scaledDotProductAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  options: AttentionOptions = {},
): tf.Tensor {
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4)
    throw new Error(
      `scaledDotProductAttention: q, k and v must be 4-d [batch, heads, positions, headDim], got [${q.shape.join(', ')}], [${k.shape.join(', ')}], [${v.shape.join(', ')}]`,
    );
  const [b, h, t, d] = q.shape as [number, number, number, number];
  const [bk, hkv, s, dk] = k.shape as [number, number, number, number];
  if (bk !== b || dk !== d || v.shape.join(',') !== k.shape.join(',') || h % hkv !== 0)
    throw new Error(
      `scaledDotProductAttention: k and v must be [${b}, Hkv, S, ${d}] with ${h} a multiple of Hkv, got k [${k.shape.join(', ')}] and v [${v.shape.join(', ')}]`,
    );
  const causal = options.causal ?? false;
  if (causal && t > s)
    throw new Error(`scaledDotProductAttention: causal attention needs at least as many keys (${s}) as queries (${t})`);
  const keyMask = options.keyMask;
  if (keyMask && (keyMask.rank !== 2 || keyMask.shape[0] !== b || keyMask.shape[1] !== s))
    throw new Error(
      `scaledDotProductAttention: keyMask must be [${b}, ${s}] (batch × key positions), got [${keyMask.shape.join(', ')}]`,
    );
  const rep = h / hkv;
  const given = options.blockSize;
  if (given !== undefined && !(Number.isInteger(given) && given > 0))
    throw new Error(`scaledDotProductAttention: blockSize must be a positive integer, got ${given}`);
  const wanted = given ?? Math.max(1, Math.floor(BLOCK_ELEMENTS / (rep * s)));
  const count = Math.ceil(t / Math.min(wanted, t));
  const size = Math.ceil(t / count);
  const blocks: [number, number][] = [];
  for (let t0 = 0; t0 < t; t0 += size) blocks.push([t0, Math.min(t, t0 + size)]);
  const dims: Dims = {
    b,
    h,
    t,
    d,
    hkv,
    s,
    rep,
    offset: s - t,
    causal,
    blocks,
    scale: options.scale ?? 1 / Math.sqrt(d),
  };
  const kEndOf = (t1: number) => (causal ? dims.offset + t1 : s);

  const op = tf.customGrad(((qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor, save: tf.GradSaveFunc) => {
    const keep = keyMask ? tf.cast(tf.notEqual(keyMask, 0), 'float32') : null;
    const stats: tf.Tensor[] = []; // per (batch, key head, block): row maximum and log of the row sum
    const batches: tf.Tensor[] = [];
    for (let bi = 0; bi < b; bi++) {
      const groups: tf.Tensor[] = [];
      for (let g = 0; g < hkv; g++) {
        const parts: tf.Tensor[] = [];
        for (const [t0, t1] of blocks) {
          const kEnd = kEndOf(t1);
          const [o, m, l] = tf.tidy(() => {
            const qs = tf.mul(slice2d(qi, bi, g * rep, rep, t0, t1, d), dims.scale);
            const kb = slice2d(ki, bi, g, 1, 0, kEnd, d);
            const vb = slice2d(vi, bi, g, 1, 0, kEnd, d);
            const scores = blockScores(dims, qs, kb, blockMask(dims, keep, bi, t0, t1, kEnd), t1 - t0, kEnd);
            const max = tf.max(scores, -1, true);
            const e = tf.exp(tf.sub(scores, max));
            const sum = tf.sum(e, -1, true);
            const out = tf.reshape(tf.matMul(tf.div(e, sum), vb), [rep, t1 - t0, d]);
            return [out, max, tf.log(sum)];
          });
          parts.push(o as tf.Tensor);
          stats.push(m as tf.Tensor, l as tf.Tensor);
        }
        groups.push(parts.length === 1 ? (parts[0] as tf.Tensor) : tf.concat(parts, 1));
      }
      batches.push(groups.length === 1 ? (groups[0] as tf.Tensor) : tf.concat(groups, 0));
    }
    const value = tf.stack(batches);
    save([qi, ki, vi, value, ...(keep ? [keep] : []), ...stats]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => attentionBackward(dims, dy, saved, keep !== null),
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...x: tf.Tensor[]) => tf.Tensor;
  return op(q, k, v);
}

/** dq, dk, dv of one attention call, block by block, recomputing each block's probabilities. */
function attentionBackward(dims: Dims, dy: tf.Tensor, saved: tf.Tensor[], masked: boolean): tf.Tensor[] {
  const { b, hkv, rep, d, s, blocks, causal, offset } = dims;
  const [q, k, v, out] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  const keep = masked ? (saved[4] as tf.Tensor) : null;
  const stats = saved.slice(masked ? 5 : 4);
  let at = 0;
  const dqs: tf.Tensor[] = [];
  const dks: tf.Tensor[] = [];
  const dvs: tf.Tensor[] = [];
  for (let bi = 0; bi < b; bi++) {
    const dqGroups: tf.Tensor[] = [];
    const dkGroups: tf.Tensor[] = [];
    const dvGroups: tf.Tensor[] = [];
    for (let g = 0; g < hkv; g++) {
      let dkAcc: tf.Tensor | null = null;
      let dvAcc: tf.Tensor | null = null;
      const dqParts: tf.Tensor[] = [];
      for (const [t0, t1] of blocks) {
        const kEnd = causal ? offset + t1 : s;
        const m = stats[at++] as tf.Tensor;
        const l = stats[at++] as tf.Tensor;
        const [dq, dk, dv] = tf.tidy(() => {
          const qs = tf.mul(slice2d(q, bi, g * rep, rep, t0, t1, d), dims.scale);
          const kb = slice2d(k, bi, g, 1, 0, kEnd, d);
          const vb = slice2d(v, bi, g, 1, 0, kEnd, d);
          const dO = slice2d(dy, bi, g * rep, rep, t0, t1, d);
          const o = slice2d(out, bi, g * rep, rep, t0, t1, d);
          const scores = blockScores(dims, qs, kb, blockMask(dims, keep, bi, t0, t1, kEnd), t1 - t0, kEnd);
          // P = exp(s − max − log Σ): a fully masked row comes back uniform, as the forward's softmax
          const p = tf.exp(tf.sub(tf.sub(scores, m), l));
          const dv = matmulTN(p, dO);
          const dp = matmulNT(dO, vb);
          const ds = tf.mul(p, tf.sub(dp, tf.sum(tf.mul(dO, o), -1, true)));
          const dq = tf.reshape(tf.mul(tf.matMul(ds, kb), dims.scale), [rep, t1 - t0, d]);
          const dk = matmulTN(ds, qs);
          const pad = (x: tf.Tensor) =>
            kEnd === s
              ? x
              : tf.pad(x, [
                  [0, s - kEnd],
                  [0, 0],
                ]);
          return [dq, pad(dk), pad(dv)];
        });
        dqParts.push(dq as tf.Tensor);
        dkAcc = addInto(dkAcc, dk as tf.Tensor);
        dvAcc = addInto(dvAcc, dv as tf.Tensor);
      }
      dqGroups.push(dqParts.length === 1 ? (dqParts[0] as tf.Tensor) : tf.concat(dqParts, 1));
      dkGroups.push(dkAcc as tf.Tensor);
      dvGroups.push(dvAcc as tf.Tensor);
    }
    dqs.push(dqGroups.length === 1 ? (dqGroups[0] as tf.Tensor) : tf.concat(dqGroups, 0));
    dks.push(tf.stack(dkGroups));
    dvs.push(tf.stack(dvGroups));
  }
  return [tf.stack(dqs), tf.stack(dks), tf.stack(dvs)];
}
