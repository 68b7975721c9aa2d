/**
 * PEFT's `magnitude_based_pruning` on the backend, for tensors that stay there (webgpu): keeps the
 * `floor(density·n)` largest magnitudes of each tensor, as torch.topk does, among equal magnitudes at the
 * cut the first ones in index order (as merge-arrays.ts does on the host).
 */
import * as tf from '@tensorflow/tfjs-core';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** The float32 with bit pattern b (non-negative floats are ordered as their bit patterns). */
function fromBits(b: number): number {
  u32[0] = b;
  return f32[0] as number;
}
/** +Infinity's bit pattern: no magnitude lies above it. */
const INF_BITS = 0x7f800000;
/** Thresholds counted per tensor in one read-back: each round narrows the cut's bit range 16-fold. */
const PER_ROUND = 15;

/**
 * Rows for the magnitudes as a matrix: tfjs-webgpu reduces each output row in one workgroup, so a
 * count over all n entries at once would run on one of the GPU's cores; a divisor of n near √n (at most
 * 4096) spreads it over that many rows, summed again in a small second step.
 */
function rowsFor(n: number): number {
  let r = Math.min(4096, Math.floor(Math.sqrt(n)));
  while (r > 1 && n % r !== 0) r--;
  return r;
}

interface Search {
  /** |t| as rows × (n / rows) */
  abs: tf.Tensor2D;
  ones: tf.Tensor;
  zeros: tf.Tensor;
  k: number;
  /** count(|x| > fromBits(lo)) ≥ k > count(|x| > fromBits(hi)); lo = −1 stands for "below 0" (count n). */
  lo: number;
  hi: number;
  aboveLo: number;
  aboveHi: number;
}

function candidates(s: Search): number[] {
  const span = s.hi - s.lo;
  if (span - 1 <= PER_ROUND) return Array.from({ length: span - 1 }, (_, j) => s.lo + 1 + j);
  return Array.from({ length: PER_ROUND }, (_, j) => s.lo + Math.round(((j + 1) * span) / (PER_ROUND + 1)));
}

/**
 * Each tensor pruned to its `floor(density·n)` largest magnitudes (the others zeroed), with tensor ops
 * and a few small read-backs: the k-th largest |x| is found in float32 bit patterns, where
 * non-negative floats are ordered, by a 16-ary search; each round counts the entries above 15
 * thresholds of every tensor at once and reads those counts back together (about eight rounds for a
 * whole float32 range, against one read-back a bit for a bisection: a GPU's cost is in those waits, and a
 * topk of millions or reading them back is no option). Counts come from comparisons, never from
 * differences (a GPU may flush the difference of near values to zero). The caller owns the results.
 */
export async function magnitudePruneTensor(tensors: tf.Tensor[], density: number): Promise<tf.Tensor[]> {
  if (density >= 1) return tensors.map((t) => tf.clone(t));
  // float32 sums of 0/1 are exact up to 2^24 entries; past that the counts are int32
  const dtype = tensors.some((t) => t.size > 2 ** 24) ? 'int32' : 'float32';
  const searches: (Search | null)[] = [];
  try {
    for (const t of tensors) {
      const n = t.size;
      const k = Math.floor(density * n);
      if (k === 0) {
        searches.push(null);
        continue;
      }
      const rows = rowsFor(n);
      const shape: [number, number] = [rows, n / rows];
      const abs = tf.tidy(() => tf.abs(tf.reshape(t, shape))) as tf.Tensor2D;
      searches.push({
        abs,
        ones: tf.ones(shape, dtype),
        zeros: tf.zeros(shape, dtype),
        k,
        lo: -1,
        hi: INF_BITS,
        aboveLo: n,
        aboveHi: 0,
      });
    }
    for (;;) {
      const open = searches.filter((s): s is Search => s !== null && s.hi - s.lo > 1);
      if (open.length === 0) break;
      const asked = open.map(candidates);
      // per tensor: each threshold's count row by row, then the rows of all its thresholds summed in one reduction
      const counts = tf.tidy(() =>
        tf.concat(
          open.map((s, i) => {
            const perRow = (asked[i] as number[]).map((b) =>
              tf.sum(tf.where(tf.greater(s.abs, fromBits(b)), s.ones, s.zeros), 1),
            );
            return tf.sum(tf.stack(perRow), 1);
          }),
        ),
      );
      const got = await counts.data();
      counts.dispose();
      let at = 0;
      for (const [i, s] of open.entries()) {
        // counts fall as the threshold rises: the last one still ≥ k is the new lo, the first one < k the new hi
        for (const b of asked[i] as number[]) {
          const c = got[at++] as number;
          if (c >= s.k && b > s.lo) {
            s.lo = b;
            s.aboveLo = c;
          } else if (c < s.k && b < s.hi) {
            s.hi = b;
            s.aboveHi = c;
          }
        }
      }
    }
    return tensors.map((t, i) => {
      const s = searches[i];
      if (!s) return tf.zerosLike(t);
      // fewer than k non-zeros (lo never left −1): keeping every entry keeps them all
      if (s.lo < 0) return tf.clone(t);
      const cut = fromBits(s.hi);
      // no float lies between lo and hi: aboveLo − aboveHi entries equal the cut, need of them are kept
      const need = s.k - s.aboveHi;
      return tf.tidy(() => {
        if (need === s.aboveLo - s.aboveHi) {
          const keep = tf.where(tf.greaterEqual(s.abs, cut), s.ones, s.zeros);
          return tf.mul(t, tf.cast(tf.reshape(keep, t.shape), t.dtype));
        }
        const abs = tf.reshape(s.abs, [-1]);
        const keepAbove = tf.where(tf.greater(abs, cut), tf.onesLike(abs), tf.zerosLike(abs));
        const equal = tf.where(tf.equal(abs, cut), tf.onesLike(abs), tf.zerosLike(abs));
        // the first `need` entries equal to the cut, in index order (a cumulative sum over the flat tensor)
        const rank = tf.cumsum(equal);
        const keepEqual = tf.mul(equal, tf.where(tf.lessEqual(rank, need), tf.onesLike(abs), tf.zerosLike(abs)));
        return tf.mul(t, tf.reshape(tf.add(keepAbove, keepEqual), t.shape));
      });
    });
  } finally {
    for (const s of searches) if (s) tf.dispose([s.abs, s.ones, s.zeros]);
  }
}
