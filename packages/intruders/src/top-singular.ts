import { eigh, matrix64 } from '@lora/linalg';

/**
 * A matrix K = D + X·Yᵀ of n1×n2 in float64, with D diagonal (`d[i]` at (i, i) for i < d.length,
 * zero elsewhere) and X (n1×r), Y (n2×r) row-major: the core of W + ΔW in the bases of W's singular
 * vectors (see `reduce-matrix.ts`). Applying it to a vector costs O((n1 + n2)·r), not O(n1·n2).
 */
export interface DiagonalPlusLowRank {
  n1: number;
  n2: number;
  d: Float64Array;
  r: number;
  x: Float64Array;
  y: Float64Array;
}

/** The leading singular triplets of a {@link DiagonalPlusLowRank}: K·v_i = σ_i·u_i, σ descending. */
export interface TopTriplets {
  s: Float64Array;
  /** Left vectors, one Float64Array of n1 per triplet. */
  u: Float64Array[];
  /** Right vectors, n2 each. */
  v: Float64Array[];
  /** The largest residual ‖Kᵀu_i − σ_i·v_i‖ over the triplets returned, relative to σ₁. */
  residual: number;
  /** The dimension of the Krylov space the triplets were taken from in the last cycle (n2: all of it). */
  dimension: number;
  /** Restarted cycles run (1: converged in the first space). */
  cycles: number;
}

/** Options of {@link topSingularTriplets}. */
export interface TopTripletsOptions {
  /**
   * Stop when every returned triplet's residual ‖Kᵀu − σv‖ is below `tol`·σ₁ (default 1e-7: the
   * inputs are float32 products, and PEFT's own SVD is float32).
   */
  tol?: number;
  /**
   * The largest space a cycle builds before it restarts from its leading Ritz vectors (default
   * max(6·b, 128), b the start block’s size, count + 2r for a rank-r update: one cycle suffices for a
   * random base weight’s flat spectrum at r 16).
   */
  cycleDimension?: number;
  /** Give up (return null) after this many cycles without convergence (default 100). */
  maxCycles?: number;
}

/** y ← K·v. */
function applyK(k: DiagonalPlusLowRank, v: Float64Array, out: Float64Array): void {
  const { n1, n2, d, r, x, y } = k;
  const t = new Float64Array(r);
  for (let i = 0; i < n2; i++) {
    const vi = v[i] as number;
    if (vi === 0) continue;
    const o = i * r;
    for (let j = 0; j < r; j++) t[j] = (t[j] as number) + (y[o + j] as number) * vi;
  }
  for (let i = 0; i < n1; i++) {
    let acc = i < d.length && i < n2 ? (d[i] as number) * (v[i] as number) : 0;
    const o = i * r;
    for (let j = 0; j < r; j++) acc += (x[o + j] as number) * (t[j] as number);
    out[i] = acc;
  }
}

/** v ← Kᵀ·u. */
function applyKt(k: DiagonalPlusLowRank, u: Float64Array, out: Float64Array): void {
  applyK({ n1: k.n2, n2: k.n1, d: k.d, r: k.r, x: k.y, y: k.x }, u, out);
}

/** Vectors of one length stored one after another in a growing Float64Array (contiguous, for speed). */
class Columns {
  data: Float64Array;
  count = 0;
  constructor(
    readonly length: number,
    capacity: number,
  ) {
    this.data = new Float64Array(length * Math.max(capacity, 1));
  }
  column(j: number): Float64Array {
    return this.data.subarray(j * this.length, (j + 1) * this.length);
  }
  push(v: Float64Array): void {
    if ((this.count + 1) * this.length > this.data.length) {
      const grown = new Float64Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data.set(v, this.count * this.length);
    this.count++;
  }
}

function dot(a: Float64Array, b: Float64Array, n: number, bOffset = 0): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += (a[i] as number) * (b[bOffset + i] as number);
  return s;
}

/**
 * The `count` leading singular triplets of K = D + X·Yᵀ, by thick-restarted block Lanczos on KᵀK
 * with full re-orthogonalisation, in float64.
 *
 * The start block holds the coordinate vectors of D's `count + r` largest entries (a direction the
 * rank-r update leaves alone can reach the top `count` only from among them: σ_{i+r}(D) ≤ σ_i(K))
 * and Y's columns: b vectors. Block by block, KᵀK times the newest block is orthogonalised against
 * the basis (a first pass of Gram–Schmidt over the two latest blocks, where Lanczos puts it, then a
 * second over the whole basis: full re-orthogonalisation, "twice is enough"); what is left,
 * normalised, joins the basis until it holds `cycleDimension` vectors (default max(6·b, 128); all of
 * n2 from three quarters of n2 on). The projection coefficients are the entries of H = Qᵀ·KᵀK·Q, so
 * Rayleigh–Ritz is the eigendecomposition of H alone: v = Q·w, σ = ‖K·v‖, u = K·v/σ. It stops when
 * every returned triplet's residual ‖Kᵀu − σv‖ is below `tol`·σ₁, or when the space is all of R^n2
 * (then it is a dense decomposition of K). Otherwise the next cycle starts from the b leading Ritz
 * vectors (a thick restart: what was learnt is kept, the space stays bounded), so it converges
 * wherever the `count`-th value is apart from the (b + 1)-th. A cycle costs O((n1 + n2)·r) per
 * product, O(n2·dim²) for re-orthogonalisation and O(dim³) for H's eigendecomposition, dim ≤
 * `cycleDimension`. Returns null only past `maxCycles` without convergence.
 */
export function topSingularTriplets(
  k: DiagonalPlusLowRank,
  count: number,
  options: TopTripletsOptions = {},
): TopTriplets | null {
  const { n1, n2, d, r } = k;
  const tol = options.tol ?? 1e-7;
  const want = Math.min(count, n1, n2);
  // D's entries are W's singular values, descending; the start block leads with the largest
  const order = [...d.keys()].filter((i) => i < n2).sort((a, b) => (d[b] as number) - (d[a] as number));
  const coordinate = (i: number) => {
    const e = new Float64Array(n2);
    e[i] = 1;
    return e;
  };
  const lead = Math.min(want + r, order.length);
  const start = order.slice(0, lead).map(coordinate);
  for (let j = 0; j < r; j++) start.push(Float64Array.from({ length: n2 }, (_, i) => k.y[i * r + j] as number));
  // a space past three quarters of n2 costs about what all of it does, and all of it is exact
  const planned = options.cycleDimension ?? Math.max(6 * start.length, 128);
  const cap = Math.min(n2, planned >= 0.75 * n2 ? n2 : planned);
  const maxCycles = options.maxCycles ?? 100;
  const basis = new Columns(n2, cap);
  extendByBlock(basis, start, cap);
  // a degenerate start (Y = 0, few coordinates): complete it with the next coordinates, then any axis
  const fillers = [...order.slice(lead), ...Array.from({ length: n2 }, (_, i) => i)];
  while (basis.count < Math.min(want, cap) && fillers.length)
    extendByBlock(basis, [coordinate(fillers.shift() as number)], cap);
  const keep = Math.min(Math.max(basis.count, want), cap - 1);
  const h = new Float64Array(cap * cap); // h[i·cap + j] = q_iᵀ·KᵀK·q_j for i < known[j]
  const known = new Int32Array(cap);
  const scratch1 = new Float64Array(n1);
  for (let cycle = 1; ; cycle++) {
    // block by block: KᵀK times the newest block, projected off the whole basis; what is left joins it
    for (let from = 0, previous = 0; from < basis.count; ) {
      const to = basis.count;
      const ws = [];
      for (let j = from; j < to; j++) {
        const w = new Float64Array(n2);
        applyK(k, basis.column(j), scratch1);
        applyKt(k, scratch1, w);
        ws.push(w);
      }
      extendByBlock(
        basis,
        ws,
        cap,
        (i, l, value) => {
          h[i * cap + from + l] = value;
        },
        previous,
      ).forEach((rows, l) => {
        known[from + l] = rows;
      });
      previous = from;
      from = to;
    }
    const dim = basis.count;
    const exhausted = dim >= n2;
    // H is symmetric in exact arithmetic; where both halves were computed, their mean
    const sym = new Float64Array(dim * dim);
    for (let i = 0; i < dim; i++)
      for (let j = 0; j < dim; j++) {
        const a = i < (known[j] as number) ? (h[i * cap + j] as number) : null;
        const b = j < (known[i] as number) ? (h[j * cap + i] as number) : null;
        sym[i * dim + j] = a === null ? (b ?? 0) : b === null ? a : (a + b) / 2;
      }
    const ritz = ritzTriplets(k, basis, sym, exhausted ? want : Math.max(keep, want), want);
    const scale = ritz.s[0] || 1;
    const converged = ritz.worst <= tol * scale;
    if (converged || exhausted || cycle >= maxCycles) {
      if (!converged && !exhausted) return null;
      return {
        s: ritz.s.slice(0, want),
        u: ritz.u.slice(0, want),
        v: ritz.v.slice(0, want),
        residual: ritz.worst / scale,
        dimension: dim,
        cycles: cycle,
      };
    }
    // thick restart from the leading Ritz vectors (orthonormal: Q and the eigenvectors are)
    basis.count = 0;
    for (const v of ritz.v) basis.push(v);
  }
}

/** w ← w − (qᵀw)·q for q = data[o … o + n); returns qᵀw. */
function projectOff(w: Float64Array, data: Float64Array, o: number, n: number): number {
  let p = 0;
  for (let i = 0; i < n; i++) p += (w[i] as number) * (data[o + i] as number);
  if (p !== 0) for (let i = 0; i < n; i++) w[i] = (w[i] as number) - p * (data[o + i] as number);
  return p;
}

/** w ← w − Σ (q_cᵀw)·q_c over the basis vectors c = j … j + 3 (orthonormal), the four qᵀw added to sum[j …]. */
function projectOff4(w: Float64Array, data: Float64Array, j: number, n: number, sum: Float64Array): void {
  const o0 = j * n;
  const o1 = o0 + n;
  const o2 = o1 + n;
  const o3 = o2 + n;
  let p0 = 0;
  let p1 = 0;
  let p2 = 0;
  let p3 = 0;
  for (let i = 0; i < n; i++) {
    const x = w[i] as number;
    p0 += x * (data[o0 + i] as number);
    p1 += x * (data[o1 + i] as number);
    p2 += x * (data[o2 + i] as number);
    p3 += x * (data[o3 + i] as number);
  }
  for (let i = 0; i < n; i++)
    w[i] =
      (w[i] as number) -
      p0 * (data[o0 + i] as number) -
      p1 * (data[o1 + i] as number) -
      p2 * (data[o2 + i] as number) -
      p3 * (data[o3 + i] as number);
  sum[j] = (sum[j] as number) + p0;
  sum[j + 1] = (sum[j + 1] as number) + p1;
  sum[j + 2] = (sum[j + 2] as number) + p2;
  sum[j + 3] = (sum[j + 3] as number) + p3;
}

/**
 * Projects the vectors `ws` off the orthonormal `basis` (two passes of modified Gram–Schmidt:
 * "twice is enough"; the loop runs over the basis outside, over the block inside, so each basis
 * vector is read once per pass), then orthonormalises them among themselves and appends, in order,
 * each that keeps more than 1e-10 of its norm, while the basis holds fewer than `cap`. `coefficient`
 * gets every q_iᵀ·w_l computed (projections summed over the passes; a new vector's own entry is the
 * norm it was divided by). Returns, per vector, how many basis rows its coefficients cover: beyond
 * them q_iᵀ·w_l is zero (q_i came later and is orthogonal to w_l's span). With `localFrom`, the
 * first pass runs over basis vectors from that index on only (Lanczos: KᵀK times a block lies in the
 * span of it and its two neighbours) and the second over all (full re-orthogonalisation).
 */
function extendByBlock(
  basis: Columns,
  ws: Float64Array[],
  cap: number,
  coefficient?: (i: number, l: number, value: number) => void,
  localFrom = 0,
): number[] {
  const n = basis.length;
  const old = basis.count;
  const sums = ws.map(() => new Float64Array(old));
  const before = ws.map((w) => Math.sqrt(dot(w, w, n)));
  for (let round = 0; round < 2; round++) {
    const data = basis.data;
    let j = round === 0 ? localFrom : 0;
    // four basis vectors at a time (classical Gram–Schmidt within the four: one sweep over w for the
    // four dots, one for the four updates), the rest one by one
    for (; j + 4 <= old; j += 4)
      for (let l = 0; l < ws.length; l++) projectOff4(ws[l] as Float64Array, data, j, n, sums[l] as Float64Array);
    for (; j < old; j++)
      for (let l = 0; l < ws.length; l++) {
        const sum = sums[l] as Float64Array;
        sum[j] = (sum[j] as number) + projectOff(ws[l] as Float64Array, data, j * n, n);
      }
  }
  const rows: number[] = [];
  const added: number[] = [];
  ws.forEach((w, l) => {
    const own = new Float64Array(added.length);
    for (let round = 0; round < 2; round++)
      added.forEach((at, a) => {
        own[a] = (own[a] as number) + projectOff(w, basis.data, at * n, n);
      });
    if (coefficient) {
      const sum = sums[l] as Float64Array;
      for (let j = 0; j < old; j++) coefficient(j, l, sum[j] as number);
      added.forEach((at, a) => {
        coefficient(at, l, own[a] as number);
      });
    }
    const after = Math.sqrt(dot(w, w, n));
    if (basis.count < cap && after > 1e-10 * (before[l] as number)) {
      for (let i = 0; i < n; i++) w[i] = (w[i] as number) / after;
      coefficient?.(basis.count, l, after);
      added.push(basis.count);
      basis.push(w);
    }
    rows.push(basis.count);
  });
  return rows;
}

/**
 * Rayleigh–Ritz from H = Qᵀ·KᵀK·Q (dim×dim, row-major) = W·Λ·Wᵀ: v = Q·w, σ = ‖K·v‖, u = K·v/σ; the
 * `count` leading triplets, and the largest residual ‖Kᵀu − σv‖ of the first `check`.
 */
function ritzTriplets(k: DiagonalPlusLowRank, basis: Columns, hSym: Float64Array, count: number, check: number) {
  const { n1, n2 } = k;
  const dim = basis.count;
  // eigenvalues ascending: the leading pairs are the last columns
  const { vectors } = eigh(matrix64(dim, dim, hSym));
  const take = Math.min(count, dim);
  const s = new Float64Array(take);
  const u: Float64Array[] = [];
  const v: Float64Array[] = [];
  const bd = basis.data;
  const scratch2 = new Float64Array(n2);
  let worst = 0;
  for (let t = 0; t < take; t++) {
    const c = dim - 1 - t;
    const vt = new Float64Array(n2);
    for (let j = 0; j < dim; j++) {
      const w = vectors.data[j * dim + c] as number;
      if (w === 0) continue;
      for (let i = 0, o = j * n2; i < n2; i++) vt[i] = (vt[i] as number) + w * (bd[o + i] as number);
    }
    const ut = new Float64Array(n1);
    applyK(k, vt, ut);
    // σ from ‖K·v‖ (as accurate for the small values as for the large, unlike √λ)
    const sigma = Math.sqrt(dot(ut, ut, n1));
    s[t] = sigma;
    if (sigma > 0) for (let i = 0; i < n1; i++) ut[i] = (ut[i] as number) / sigma;
    if (t < check) {
      applyKt(k, ut, scratch2);
      let res = 0;
      for (let i = 0; i < n2; i++) res += ((scratch2[i] as number) - sigma * (vt[i] as number)) ** 2;
      worst = Math.max(worst, Math.sqrt(res));
    }
    u.push(ut);
    v.push(vt);
  }
  return { s, u, v, worst };
}
