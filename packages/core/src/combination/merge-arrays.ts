/**
 * PEFT's merge functions (`task_arithmetic`, `magnitude_prune`, `ties`, `dare_linear`, `dare_ties`) on
 * float32 arrays, in one pass per step: what the CPU backends do slowly as tensor ops on a 4096² ΔW
 * (tfjs-wasm's topk and scatterND of millions of entries take seconds). The pruning keeps exactly
 * `floor(density·n)` entries, as torch.topk does; among equal magnitudes at the cut, the first ones.
 */
import type { Generator } from '@lora/tensor';

/** The k-th largest of `x` (1-based), by quickselect on a copy. */
function kthLargest(x: Float32Array, k: number): number {
  const a = x.slice();
  let lo = 0;
  let hi = a.length - 1;
  const target = a.length - k; // the (n−k)-th smallest, 0-based
  while (lo < hi) {
    // median of three as the pivot, then Hoare partition
    const mid = (lo + hi) >>> 1;
    const x0 = a[lo] as number;
    const x1 = a[mid] as number;
    const x2 = a[hi] as number;
    const pivot = Math.max(Math.min(x0, x1), Math.min(Math.max(x0, x1), x2)); // the median of the three
    let i = lo;
    let j = hi;
    while (i <= j) {
      while ((a[i] as number) < pivot) i++;
      while ((a[j] as number) > pivot) j--;
      if (i <= j) {
        const t = a[i] as number;
        a[i] = a[j] as number;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target] as number;
  }
  return a[target] as number;
}

/** PEFT's `magnitude_based_pruning`: keeps the floor(density·n) largest magnitudes, zeroes the rest. */
export function magnitudePruneArray(x: Float32Array, density: number): Float32Array {
  if (density >= 1) return Float32Array.from(x);
  const n = x.length;
  const k = Math.floor(density * n);
  const out = new Float32Array(n);
  if (k === 0) return out;
  // (Float32Array.from with a map function boxes every value: seconds for millions)
  const abs = new Float32Array(n);
  for (let i = 0; i < n; i++) abs[i] = Math.abs(x[i] as number);
  const cut = kthLargest(abs, k);
  let above = 0;
  for (let i = 0; i < n; i++) if ((abs[i] as number) > cut) above++;
  let ties = k - above;
  for (let i = 0; i < n; i++) {
    const v = abs[i] as number;
    if (v > cut || (v === cut && ties-- > 0)) out[i] = x[i] as number;
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
  for (let i = 0; i < n; i++) {
    let votes = 0;
    for (let t = 0; t < count; t++) {
      const v = (pruned[t] as Float32Array)[i] as number;
      votes += ties === 'frequency' ? Math.sign(v) : v;
    }
    const elected = votes >= 0 ? 1 : -1;
    let sum = 0;
    let agree = 0;
    for (let t = 0; t < count; t++) {
      const v = (pruned[t] as Float32Array)[i] as number;
      if (Math.sign(v) === elected) {
        sum += (weights[t] as number) * v;
        agree++;
      }
    }
    out[i] = agree > 0 ? sum / agree : 0;
  }
  return out;
}
