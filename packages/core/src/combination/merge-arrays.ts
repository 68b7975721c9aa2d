/**
 * PEFT's merge functions (`task_arithmetic`, `magnitude_prune`, `ties`, `dare_linear`, `dare_ties`) on
 * float32 arrays, in one pass per step: what the CPU backends do slowly as tensor ops on a 4096² ΔW
 * (tfjs-wasm's topk and scatterND of millions of entries take seconds). The pruning keeps exactly
 * `floor(density·n)` entries, as torch.topk does; among equal magnitudes at the cut, the first ones.
 */
import type { Generator } from '@lora/tensor';

/**
 * PEFT's `magnitude_based_pruning`: keeps the floor(density·n) largest magnitudes, zeroes the rest.
 * The cut is found exactly in float32 bit patterns (non-negative floats are ordered as their bits, the
 * sign bit masked off): a histogram of the top 16 bits finds the bucket that holds the k-th largest, a
 * second one of the low 15 bits inside that bucket the value itself; three linear passes, nothing sorted.
 */
export function magnitudePruneArray(x: Float32Array, density: number): Float32Array {
  if (density >= 1) return Float32Array.from(x);
  const n = x.length;
  const k = Math.floor(density * n);
  const out = new Float32Array(n);
  if (k === 0) return out;
  const bits = new Uint32Array(x.buffer, x.byteOffset, n);
  const high = new Uint32Array(1 << 16);
  for (let i = 0; i < n; i++) {
    const h = ((bits[i] as number) & 0x7fffffff) >>> 15;
    high[h] = (high[h] as number) + 1;
  }
  // `above` counts the magnitudes above the bucket (then above the cut) as the search walks down
  let above = 0;
  let bucket = (1 << 16) - 1;
  while (above + (high[bucket] as number) < k) above += high[bucket--] as number;
  const low = new Uint32Array(1 << 15);
  for (let i = 0; i < n; i++) {
    const m = (bits[i] as number) & 0x7fffffff;
    if (m >>> 15 === bucket) low[m & 0x7fff] = (low[m & 0x7fff] as number) + 1;
  }
  let l = (1 << 15) - 1;
  while (above + (low[l] as number) < k) above += low[l--] as number;
  const cut = bucket * (1 << 15) + l;
  // among the magnitudes equal to the cut, the first (k − above) in index order are kept
  let ties = k - above;
  for (let i = 0; i < n; i++) {
    const m = (bits[i] as number) & 0x7fffffff;
    if (m > cut || (m === cut && ties-- > 0)) out[i] = x[i] as number;
  }
  return out;
}

/** PEFT's `prune(t, density, 'random', rescale=True)`: keeps each entry with probability density, divided by it. */
export function randomPruneArray(x: Float32Array, density: number, g: Generator): Float32Array {
  if (density >= 1) return Float32Array.from(x);
  const u = g.fillUniform(new Float32Array(x.length));
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) if ((u[i] as number) < density) out[i] = (x[i] as number) / density;
  return out;
}

/**
 * The weighted merge of task arrays: pruned per `prune`, then summed with `weights`, or with `ties`
 * by TIES' disjoint merge (a sign elected per entry from the unweighted pruned arrays, by their sum or
 * by a vote of their signs; the weighted entries that agree with it averaged).
 */
export function mergeArrays(
  values: Float32Array[],
  weights: number[],
  prune: 'magnitude' | 'random' | 'none',
  ties: false | 'total' | 'frequency',
  density: number,
  g: Generator,
): Float32Array {
  const pruned =
    prune === 'magnitude'
      ? values.map((v) => magnitudePruneArray(v, density))
      : prune === 'random'
        ? values.map((v) => randomPruneArray(v, density, g))
        : values;
  const n = pruned[0]?.length ?? 0;
  const out = new Float32Array(n);
  if (!ties) {
    for (const [t, p] of pruned.entries()) {
      const w = weights[t] as number;
      for (let i = 0; i < n; i++) out[i] = (out[i] as number) + w * (p[i] as number);
    }
    return out;
  }
  const count = pruned.length;
  const frequency = ties === 'frequency';
  for (let i = 0; i < n; i++) {
    let votes = 0;
    for (let t = 0; t < count; t++) {
      const v = (pruned[t] as Float32Array)[i] as number;
      votes += frequency ? (v > 0 ? 1 : v < 0 ? -1 : 0) : v;
    }
    // the entries whose sign is the elected one (zeros never agree)
    const up = votes >= 0;
    let sum = 0;
    let agree = 0;
    for (let t = 0; t < count; t++) {
      const v = (pruned[t] as Float32Array)[i] as number;
      if (up ? v > 0 : v < 0) {
        sum += (weights[t] as number) * v;
        agree++;
      }
    }
    out[i] = agree > 0 ? sum / agree : 0;
  }
  return out;
}
