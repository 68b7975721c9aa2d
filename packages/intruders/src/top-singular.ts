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
  /** The dimension of the Krylov space the triplets were taken from (n2: all of it). */
  dimension: number;
}

/** Options of {@link topSingularTriplets}. */
export interface TopTripletsOptions {
  /**
   * Stop when every returned triplet's residual ‖Kᵀu − σv‖ is below `tol`·σ₁ (default 1e-7: the
   * inputs are float32 products, and PEFT's own SVD is float32).
   */
  tol?: number;
  /**
   * Give up (return null) once the Krylov space would pass this dimension: past about a quarter of
   * n2 a dense SVD of K costs less than more Krylov steps (default: n2, never give up).
   */
  maxDimension?: number;
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
 * Appends to the orthonormal `basis` the parts of `candidates` it does not span yet (two passes of
 * classical Gram–Schmidt: "twice is enough"); a candidate that keeps under 1e-10 of its norm is
 * dependent and dropped. Returns the vectors added.
 */
function extendBasis(basis: Columns, candidates: Float64Array[]): Float64Array[] {
  const n = basis.length;
  const added: Float64Array[] = [];
  const coef = new Float64Array(basis.count + candidates.length);
  for (const c of candidates) {
    const v = Float64Array.from(c);
    const before = Math.sqrt(dot(v, v, n));
    if (before === 0) continue;
    for (let pass = 0; pass < 2; pass++) {
      const data = basis.data;
      const cols = basis.count;
      for (let j = 0; j < cols; j++) coef[j] = dot(v, data, n, j * n);
      for (let j = 0; j < cols; j++) {
        const p = coef[j] as number;
        if (p === 0) continue;
        const o = j * n;
        for (let i = 0; i < n; i++) v[i] = (v[i] as number) - p * (data[o + i] as number);
      }
    }
    const after = Math.sqrt(dot(v, v, n));
    if (after <= 1e-10 * before) continue;
    for (let i = 0; i < n; i++) v[i] = (v[i] as number) / after;
    basis.push(v);
    added.push(v);
  }
  return added;
}

/**
 * The `count` leading singular triplets of K = D + X·Yᵀ, by block Krylov iteration on KᵀK with full
 * re-orthogonalisation and Rayleigh–Ritz, in float64. The start block holds the coordinate vectors
 * of D's `count + r` largest entries (a direction the rank-r update leaves alone can reach the top
 * `count` only from among them: σ_{i+r}(D) ≤ σ_i(K)) and Y's columns; each step adds KᵀK applied to
 * the previous block. It stops when every returned triplet's residual ‖Kᵀu − σv‖ is below
 * `tol`·σ₁, or when the space is all of R^n2 (then Rayleigh–Ritz is a dense decomposition of K),
 * and returns null when it would pass `maxDimension` first. A step costs O(n·r·b) for the products
 * and O(n·dim·b) for re-orthogonalisation (b the block size); Rayleigh–Ritz — the
 * eigendecomposition of the dim×dim Gram matrix of K·basis, O(dim³) — runs each time the space has
 * grown by a quarter. Fast when the leading values are separated (trained weights, and intruders
 * well above the rest); a spectrum as flat as a random matrix's edge needs a space near n2 and is
 * better decomposed densely.
 */
export function topSingularTriplets(
  k: DiagonalPlusLowRank,
  count: number,
  options: TopTripletsOptions = {},
): TopTriplets | null {
  const { n1, n2, d, r } = k;
  const tol = options.tol ?? 1e-7;
  const cap = Math.min(options.maxDimension ?? n2, n2);
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
  const basis = new Columns(n2, 4 * start.length);
  const kBasis = new Columns(n1, 4 * start.length); // K·basis[i]
  let gram = new Float64Array(0); // (K·basis)ᵀ(K·basis), row-major dim×dim
  let block = extendBasis(basis, start);
  // a degenerate start (Y = 0, few coordinates): complete it with the next coordinates, then any axis
  const fillers = [...order.slice(lead), ...Array.from({ length: n2 }, (_, i) => i)];
  while (basis.count < want && fillers.length)
    block = [...block, ...extendBasis(basis, [coordinate(fillers.shift() as number)])];
  const scratch1 = new Float64Array(n1);
  const scratch2 = new Float64Array(n2);
  let lastRitz = 0;
  for (;;) {
    const from = kBasis.count;
    for (const v of block) {
      applyK(k, v, scratch1);
      kBasis.push(scratch1);
    }
    const dim = kBasis.count;
    const grown = new Float64Array(dim * dim);
    for (let i = 0; i < from; i++) grown.set(gram.subarray(i * from, (i + 1) * from), i * dim);
    const kd = kBasis.data;
    for (let j = from; j < dim; j++)
      for (let i = 0; i <= j; i++) {
        const g = dot(kd.subarray(i * n1, (i + 1) * n1), kd, n1, j * n1);
        grown[i * dim + j] = g;
        grown[j * dim + i] = g;
      }
    gram = grown;
    // the next block joins the basis now; Rayleigh–Ritz below uses the first `dim` vectors only
    const next: Float64Array[] = [];
    if (dim < n2)
      for (const b of block) {
        applyK(k, b, scratch1);
        const w = new Float64Array(n2);
        applyKt(k, scratch1, w);
        next.push(w);
      }
    block = extendBasis(basis, next);
    const last = block.length === 0;
    if (!last && basis.count <= cap && dim < 1.25 * lastRitz) continue;
    lastRitz = dim;
    // Rayleigh–Ritz: Gram = W·Λ·Wᵀ; σ = √λ, v = basis·w, u = K·basis·w / σ (so K·v = σ·u)
    const { values, vectors } = eigh(matrix64(dim, dim, gram));
    const s = new Float64Array(want);
    const u: Float64Array[] = [];
    const v: Float64Array[] = [];
    let worst = 0;
    const bd = basis.data;
    for (let t = 0; t < want; t++) {
      const c = dim - 1 - t;
      const sigma = Math.sqrt(Math.max(values[c] as number, 0));
      s[t] = sigma;
      const ut = new Float64Array(n1);
      const vt = new Float64Array(n2);
      for (let j = 0; j < dim; j++) {
        const w = vectors.data[j * dim + c] as number;
        if (w === 0) continue;
        for (let i = 0, o = j * n2; i < n2; i++) vt[i] = (vt[i] as number) + w * (bd[o + i] as number);
        for (let i = 0, o = j * n1; i < n1; i++) ut[i] = (ut[i] as number) + w * (kd[o + i] as number);
      }
      const norm = Math.sqrt(dot(ut, ut, n1));
      if (norm > 0) for (let i = 0; i < n1; i++) ut[i] = (ut[i] as number) / norm;
      applyKt(k, ut, scratch2);
      let res = 0;
      for (let i = 0; i < n2; i++) res += ((scratch2[i] as number) - sigma * (vt[i] as number)) ** 2;
      worst = Math.max(worst, Math.sqrt(res));
      u.push(ut);
      v.push(vt);
    }
    const scale = s[0] || 1;
    if (worst <= tol * scale || last) return { s, u, v, residual: worst / scale, dimension: dim };
    if (basis.count > cap) return null;
  }
}
