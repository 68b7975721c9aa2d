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
   * that share a key head) under 2M elements (8 MiB). Only memory and speed depend on it, not the result.
   */
  blockSize?: number;
}

/**
 * What a masked score gets: −3.4e38, within 0.01% of the float32 minimum transformers adds (any value
 * this low gives the same probabilities: exactly 0 beside an allowed key, uniform in a fully masked
 * row); the exact minimum makes tfjs-backend-webgpu's softmax return NaN for a fully masked row.
 */
const FLOAT32_MIN = -3.4e38;
const BLOCK_ELEMENTS = 2 ** 21;

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

/**
 * The causal part of one block's additive mask, [t1 − t0, kEnd]: 0 where query t (at position
 * offset + t) may see key j (j ≤ offset + t), the float32 minimum elsewhere. Built on the host (a
 * broadcast comparison on wasm costs ~100 ns per element).
 */
function causalMask(dims: Dims, t0: number, t1: number, kEnd: number): tf.Tensor {
  const rows = t1 - t0;
  const data = new Float32Array(rows * kEnd);
  for (let r = 0; r < rows; r++) {
    const last = dims.offset + t0 + r;
    if (last + 1 < kEnd) data.fill(FLOAT32_MIN, r * kEnd + last + 1, (r + 1) * kEnd);
  }
  return tf.tensor2d(data, [rows, kEnd]);
}

/** Additive masks of one block for each batch row (one shared entry when only causal), or null when nothing is masked. */
function blockMasks(dims: Dims, keep: tf.Tensor | null, t0: number, t1: number, kEnd: number): tf.Tensor[] | null {
  if (!dims.causal && !keep) return null;
  return tf.tidy(() => {
    const causal = dims.causal ? causalMask(dims, t0, t1, kEnd) : null;
    if (!keep) return [causal as tf.Tensor];
    // one minimum where either mask forbids, as transformers' eager attention adds it
    const allowed = causal ? tf.cast(tf.equal(causal, 0), 'float32') : null;
    return Array.from({ length: dims.b }, (_, bi) => {
      const row = tf.slice(keep, [bi, 0], [1, kEnd]);
      return tf.mul(tf.sub(1, allowed ? tf.mul(allowed, row) : row), FLOAT32_MIN);
    });
  });
}

/** Probabilities of one block, softmax(q·kᵀ + mask): [rep·bq, kEnd]. */
function blockProbs(
  dims: Dims,
  qs: tf.Tensor,
  kb: tf.Tensor,
  mask: tf.Tensor | null,
  bq: number,
  kEnd: number,
): tf.Tensor {
  const s = matmulNT(qs, kb);
  if (!mask) return tf.softmax(s);
  // the rep heads' rows share the mask: add it to [rep, bq, kEnd] by broadcasting
  return tf.softmax(tf.reshape(tf.add(tf.reshape(s, [dims.rep, bq, kEnd]), mask), [dims.rep * bq, kEnd]));
}

/**
 * Keys a causal block needs: those up to its last query. With a padding mask every key, because
 * a query whose allowed keys are all padding (left padding) attends, as in transformers' eager
 * attention, uniformly to all S keys, future ones included.
 */
function keyEnd(dims: Dims, t1: number, padded: boolean): number {
  return dims.causal && !padded ? dims.offset + t1 : dims.s;
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
 * backward pass keeps q, k, v and the output, and recomputes each block's probabilities, so memory
 * grows with T·D rather than with the T·S score matrices; causal blocks skip the keys after their
 * last query (not with a padding mask, see below). Products are 2-d (one key head at a time), the
 * form the wasm backend's XNNPACK runs fast.
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
  const kEndOf = (t1: number) => keyEnd(dims, t1, keyMask !== undefined);

  const op = tf.customGrad(((qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor, save: tf.GradSaveFunc) => {
    const keep = keyMask ? tf.cast(tf.notEqual(keyMask, 0), 'float32') : null;
    const outs: tf.Tensor[][][] = Array.from({ length: b }, () => Array.from({ length: hkv }, () => []));
    for (const [t0, t1] of blocks) {
      const kEnd = kEndOf(t1);
      const masks = blockMasks(dims, keep, t0, t1, kEnd);
      for (let bi = 0; bi < b; bi++)
        for (let g = 0; g < hkv; g++) {
          const o = tf.tidy(() => {
            const qs = tf.mul(slice2d(qi, bi, g * rep, rep, t0, t1, d), dims.scale);
            const kb = slice2d(ki, bi, g, 1, 0, kEnd, d);
            const vb = slice2d(vi, bi, g, 1, 0, kEnd, d);
            const mask = masks ? (masks[masks.length === 1 ? 0 : bi] as tf.Tensor) : null;
            const p = blockProbs(dims, qs, kb, mask, t1 - t0, kEnd);
            return tf.reshape(tf.matMul(p, vb), [rep, t1 - t0, d]);
          });
          (outs[bi] as tf.Tensor[][])[g]?.push(o);
        }
      if (masks) tf.dispose(masks);
    }
    const value = tf.stack(
      outs.map((groups) =>
        tf.concat(
          groups.map((parts) => (parts.length === 1 ? (parts[0] as tf.Tensor) : tf.concat(parts, 1))),
          0,
        ),
      ),
    );
    save([qi, ki, vi, value, ...(keep ? [keep] : [])]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => attentionBackward(dims, dy, saved, keep !== null),
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...x: tf.Tensor[]) => tf.Tensor;
  return op(q, k, v);
}

/** dq, dk, dv of one attention call, block by block, recomputing each block's probabilities. */
function attentionBackward(dims: Dims, dy: tf.Tensor, saved: tf.Tensor[], masked: boolean): tf.Tensor[] {
  const { b, hkv, rep, d, s, blocks } = dims;
  const [q, k, v, out] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  const keep = masked ? (saved[4] as tf.Tensor) : null;
  const dq: tf.Tensor[][][] = Array.from({ length: b }, () => Array.from({ length: hkv }, () => []));
  const dk: (tf.Tensor | null)[][] = Array.from({ length: b }, () => Array.from({ length: hkv }, () => null));
  const dv: (tf.Tensor | null)[][] = Array.from({ length: b }, () => Array.from({ length: hkv }, () => null));
  for (const [t0, t1] of blocks) {
    const kEnd = keyEnd(dims, t1, masked);
    const masks = blockMasks(dims, keep, t0, t1, kEnd);
    for (let bi = 0; bi < b; bi++)
      for (let g = 0; g < hkv; g++) {
        const [dqb, dkb, dvb] = tf.tidy(() => {
          const qs = tf.mul(slice2d(q, bi, g * rep, rep, t0, t1, d), dims.scale);
          const kb = slice2d(k, bi, g, 1, 0, kEnd, d);
          const vb = slice2d(v, bi, g, 1, 0, kEnd, d);
          const dO = slice2d(dy, bi, g * rep, rep, t0, t1, d);
          const o = slice2d(out, bi, g * rep, rep, t0, t1, d);
          const mask = masks ? (masks[masks.length === 1 ? 0 : bi] as tf.Tensor) : null;
          // the forward's probabilities again (the same softmax of the same scores)
          const p = blockProbs(dims, qs, kb, mask, t1 - t0, kEnd);
          const dvBlock = matmulTN(p, dO);
          const ds = tf.mul(p, tf.sub(matmulNT(dO, vb), tf.sum(tf.mul(dO, o), -1, true)));
          const dqBlock = tf.reshape(tf.mul(tf.matMul(ds, kb), dims.scale), [rep, t1 - t0, d]);
          const dkBlock = matmulTN(ds, qs);
          // zeros for the keys after the block's last query (a concatenation along rows: cheap everywhere)
          const pad = (x: tf.Tensor) => (kEnd === s ? x : tf.concat([x, tf.zeros([s - kEnd, d])], 0));
          return [dqBlock, pad(dkBlock), pad(dvBlock)];
        });
        (dq[bi] as tf.Tensor[][])[g]?.push(dqb as tf.Tensor);
        (dk[bi] as (tf.Tensor | null)[])[g] = addInto((dk[bi] as (tf.Tensor | null)[])[g] ?? null, dkb as tf.Tensor);
        (dv[bi] as (tf.Tensor | null)[])[g] = addInto((dv[bi] as (tf.Tensor | null)[])[g] ?? null, dvb as tf.Tensor);
      }
    if (masks) tf.dispose(masks);
  }
  return [
    tf.stack(
      dq.map((groups) =>
        tf.concat(
          groups.map((parts) => (parts.length === 1 ? (parts[0] as tf.Tensor) : tf.concat(parts, 1))),
          0,
        ),
      ),
    ),
    tf.stack(dk.map((groups) => tf.stack(groups as tf.Tensor[]))),
    tf.stack(dv.map((groups) => tf.stack(groups as tf.Tensor[]))),
  ];
}
