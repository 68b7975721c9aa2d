/**
 * The arithmetic of EVA's rank redistribution, exactly as PEFT 0.21 does it: Python's `round` (half to
 * even), torch's CPU `argsort(descending=True)` (ties and all), and `_get_rank_distribution`.
 */

/**
 * Python 3's `round(x)`: to the nearest integer, halves to the even one (`round(2.5) = 2`,
 * `round(3.5) = 4`), on the exact binary value of `x` (so `round(0.5 + 2**-53)` is 1).
 *
 * @example
 * ```ts
 * roundHalfEven(8 * 1.3125); // 10 (10.5 rounds to the even 10)
 * ```
 */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const frac = x - f; // exact for every double below 2^52
  if (frac > 0.5) return f + 1;
  if (frac < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** torch's descending comparator on (value, index) pairs: NaN first, then larger values. */
function before(values: ArrayLike<number>, a: number, b: number): boolean {
  const x = values[a] as number;
  const y = values[b] as number;
  return (Number.isNaN(x) && !Number.isNaN(y)) || x > y;
}

/**
 * The permutation `torch.argsort(values, descending=True)` returns on the CPU, ties included. torch
 * sorts (value, index) pairs with libstdc++'s `std::sort` (introsort: median-of-three quicksort down to
 * runs of 16, heapsort past a depth of 2·log2(n), then one insertion sort), which is not stable: equal
 * values come out in an order that depends on the whole array. EVA's rank count over equal-input layers
 * (q/k/v) depends on that order, so it is reproduced step for step here.
 *
 * @example
 * ```ts
 * torchArgsortDescending([1, 3, 3, 2]); // [1, 2, 3, 0]
 * ```
 */
export function torchArgsortDescending(values: ArrayLike<number>): number[] {
  const a = Array.from({ length: values.length }, (_, i) => i);
  const less = (i: number, j: number) => before(values, i, j);
  const swap = (i: number, j: number) => {
    const t = a[i] as number;
    a[i] = a[j] as number;
    a[j] = t;
  };
  const at = (i: number) => a[i] as number;
  const unguardedLinearInsert = (last: number) => {
    const v = at(last);
    let next = last - 1;
    while (less(v, at(next))) {
      a[last] = at(next);
      last = next;
      next--;
    }
    a[last] = v;
  };
  const insertionSort = (first: number, last: number) => {
    if (first === last) return;
    for (let i = first + 1; i < last; i++) {
      if (less(at(i), at(first))) {
        const v = at(i);
        for (let j = i; j > first; j--) a[j] = at(j - 1);
        a[first] = v;
      } else unguardedLinearInsert(i);
    }
  };
  const medianToFirst = (result: number, x: number, y: number, z: number) => {
    if (less(at(x), at(y))) {
      if (less(at(y), at(z))) swap(result, y);
      else if (less(at(x), at(z))) swap(result, z);
      else swap(result, x);
    } else if (less(at(x), at(z))) swap(result, x);
    else if (less(at(y), at(z))) swap(result, z);
    else swap(result, y);
  };
  const unguardedPartition = (first: number, last: number, pivot: number) => {
    for (;;) {
      while (less(at(first), at(pivot))) first++;
      last--;
      while (less(at(pivot), at(last))) last--;
      if (!(first < last)) return first;
      swap(first, last);
      first++;
    }
  };
  const adjustHeap = (first: number, hole: number, length: number, value: number) => {
    const top = hole;
    let child = hole;
    while (child < Math.floor((length - 1) / 2)) {
      child = 2 * (child + 1);
      if (less(at(first + child), at(first + child - 1))) child--;
      a[first + hole] = at(first + child);
      hole = child;
    }
    if ((length & 1) === 0 && child === Math.floor((length - 2) / 2)) {
      child = 2 * (child + 1);
      a[first + hole] = at(first + child - 1);
      hole = child - 1;
    }
    let parent = Math.floor((hole - 1) / 2);
    while (hole > top && less(at(first + parent), value)) {
      a[first + hole] = at(first + parent);
      hole = parent;
      parent = Math.floor((hole - 1) / 2);
    }
    a[first + hole] = value;
  };
  const heapSort = (first: number, last: number) => {
    const length = last - first;
    if (length >= 2) {
      for (let parent = Math.floor((length - 2) / 2); ; parent--) {
        adjustHeap(first, parent, length, at(first + parent));
        if (parent === 0) break;
      }
    }
    while (last - first > 1) {
      last--;
      const v = at(last);
      a[last] = at(first);
      adjustHeap(first, 0, last - first, v);
    }
  };
  const introsortLoop = (first: number, last: number, depth: number) => {
    while (last - first > 16) {
      if (depth === 0) {
        heapSort(first, last);
        return;
      }
      depth--;
      const mid = first + Math.floor((last - first) / 2);
      medianToFirst(first, first + 1, mid, last - 1);
      const cut = unguardedPartition(first + 1, last, first);
      introsortLoop(cut, last, depth);
      last = cut;
    }
  };
  const n = a.length;
  if (n > 1) {
    introsortLoop(0, n, 2 * (31 - Math.clz32(n))); // std::__lg(n) * 2
    if (n > 16) {
      insertionSort(0, 16);
      for (let i = 16; i < n; i++) unguardedLinearInsert(i);
    } else insertionSort(0, n);
  }
  return a;
}

/** What {@link rankDistribution} needs about the layers. */
export interface RankDistributionInput {
  /** Every target layer with the layer whose hook computes its components (itself, or the first of its equal-input group), in PEFT's `layer_hook_map` order: hook layers in module order, then the other group members. */
  layerHookMap: ReadonlyArray<readonly [layer: string, hook: string]>;
  /** The explained variance ratio of each hook layer's components (as many as it computes). */
  explainedVarianceRatio: ReadonlyMap<string, ArrayLike<number>>;
  /** The most components each hook layer may take (PEFT's `max_components` of the hook). */
  maxComponents: ReadonlyMap<string, number>;
  /** The total rank to share: the sum of every target layer's r. */
  budget: number;
}

/**
 * PEFT's `_get_rank_distribution`: pools every layer's explained variance ratios (members of an
 * equal-input group contribute their hook's values again), takes the `budget` largest, counts them per
 * layer, then swaps counts so that each group's hook layer holds the group's largest rank. Returns the
 * ranks in `layerHookMap` order (0 allowed).
 *
 * @example
 * ```ts
 * rankDistribution({ layerHookMap: [['a', 'a'], ['b', 'b'], ['c', 'b']], explainedVarianceRatio, maxComponents, budget: 6 });
 * // Map { 'a' => 1, 'b' => 3, 'c' => 2 }
 * ```
 */
export function rankDistribution(input: RankDistributionInput): Map<string, number> {
  const keys: string[] = [];
  const values: number[] = [];
  for (const [layer, hook] of input.layerHookMap) {
    const evr = input.explainedVarianceRatio.get(hook);
    if (!evr) throw new Error(`rankDistribution: no explained variance for hook layer '${hook}'`);
    const take = Math.min(evr.length, input.maxComponents.get(hook) ?? evr.length);
    for (let i = 0; i < take; i++) {
      keys.push(layer);
      values.push(evr[i] as number);
    }
  }
  const order = torchArgsortDescending(values);
  const counts = new Map<string, number>(input.layerHookMap.map(([layer]) => [layer, 0]));
  for (const i of order.slice(0, input.budget)) {
    const k = keys[i] as string;
    counts.set(k, (counts.get(k) as number) + 1);
  }
  for (const [layer, hook] of input.layerHookMap) {
    if (layer === hook) continue;
    const rank = counts.get(layer) as number;
    const rankHook = counts.get(hook) as number;
    if (rankHook >= rank) continue;
    counts.set(hook, rank);
    counts.set(layer, rankHook);
  }
  return counts;
}
