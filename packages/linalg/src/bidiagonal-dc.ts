/**
 * Divide-and-conquer SVD of an upper-bidiagonal matrix (Jessup & Sorensen 1994; Gu & Eisenstat 1995;
 * the algorithm of LAPACK's dbdsdc, written afresh). The matrix is split at its middle row; each half
 * is decomposed recursively; the two are joined through the SVD of an "arrow" matrix e_s·zᵀ + diag(d),
 * whose singular values are the roots of a secular equation ({@link secularRoot}) and whose singular
 * vectors have closed forms. Singular values are computed in float64 throughout, from the first and
 * last rows of each half's right singular vectors, which are tracked in float64 too.
 *
 * The singular vectors are where the work is: each join multiplies the halves' vectors by the arrow's
 * (an n×n product). Below `tensorFrom` rows they are float64 arrays multiplied here; from there up they
 * are float32 tensors multiplied on the active backend, which is what makes a 4096² decomposition
 * take seconds rather than hours.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type SecularRoot, secularRoot, squaredGap } from './secular';
import { svd64 } from './svd-float64';

const EPS = 2 ** -52;

/** The SVD of an n×n arrow matrix, in its coordinates: columns sorted by descending σ. */
export interface ArrowSvd {
  sigma: Float64Array;
  /** n×n row-major; column c is the left singular vector of sigma[c] */
  u: Float64Array;
  /** n×n row-major; column c is the right singular vector of sigma[c] */
  w: Float64Array;
}

/** a ← aᵀ for a square n×n array, by 32×32 blocks. */
function transposeInPlace(a: Float64Array, n: number): void {
  const B = 32;
  for (let i0 = 0; i0 < n; i0 += B) {
    const i1 = Math.min(i0 + B, n);
    for (let j0 = i0; j0 < n; j0 += B) {
      const j1 = Math.min(j0 + B, n);
      for (let i = i0; i < i1; i++) {
        const ri = i * n;
        for (let j = j0 === i0 ? i + 1 : j0; j < j1; j++) {
          const x = a[ri + j] as number;
          a[ri + j] = a[j * n + i] as number;
          a[j * n + i] = x;
        }
      }
    }
  }
}

/**
 * SVD of M = e_s·zᵀ + diag(d), with d[s] = 0 and every other d ≥ 0: row s is z, the rest is diagonal.
 * Deflates, as dlasd2 does, the coordinates whose z is negligible and pairs of nearly equal d (a
 * rotation moves one's z into the other); a d within the tolerance of 0 is rotated into coordinate s.
 */
export function arrowSvd(d: Float64Array, z: Float64Array, s: number): ArrowSvd {
  const n = d.length;
  const sigma = new Float64Array(n);
  const u = new Float64Array(n * n);
  const w = new Float64Array(n * n);
  let scale = 0;
  for (let j = 0; j < n; j++) scale = Math.max(scale, Math.abs(d[j] as number), Math.abs(z[j] as number));
  if (scale === 0) {
    for (let j = 0; j < n; j++) {
      u[j * n + j] = 1;
      w[j * n + j] = 1;
    }
    return { sigma, u, w };
  }
  const tol = 8 * EPS * scale;
  const zz = Float64Array.from(z);
  if (Math.abs(zz[s] as number) <= tol) zz[s] = tol;
  const order: number[] = [];
  for (let j = 0; j < n; j++) if (j !== s) order.push(j);
  order.sort((a, b) => (d[a] as number) - (d[b] as number));
  const kept: number[] = [s];
  const deflated: { j: number; value: number; sign: number }[] = [];
  // each rotation G acts on coordinates (a, b); `both`: on the left and right vectors, else the right only
  const rotations: { a: number; b: number; c: number; sn: number; both: boolean }[] = [];
  let prev = -1;
  for (const j of order) {
    const dj = d[j] as number;
    if (Math.abs(zz[j] as number) <= tol) {
      deflated.push({ j, value: dj, sign: 1 });
      continue;
    }
    if (dj <= tol) {
      // as good as a second zero on the diagonal: fold z[j] into z[s]; row j keeps c·d[j] (≤ tol)
      const zs = zz[s] as number;
      const r = Math.hypot(zs, zz[j] as number);
      const c = zs / r;
      const sn = (zz[j] as number) / r;
      zz[s] = r;
      zz[j] = 0;
      rotations.push({ a: s, b: j, c, sn, both: false });
      deflated.push({ j, value: Math.abs(c * dj), sign: c * dj < 0 ? -1 : 1 });
      continue;
    }
    if (prev >= 0 && dj - (d[prev] as number) <= tol) {
      // nearly equal to its predecessor: rotate the pair so that the predecessor's z vanishes
      const zp = zz[prev] as number;
      const r = Math.hypot(zp, zz[j] as number);
      const c = (zz[j] as number) / r;
      const sn = zp / r;
      zz[j] = r;
      zz[prev] = 0;
      rotations.push({ a: prev, b: j, c, sn, both: true });
      kept.pop();
      deflated.push({ j: prev, value: d[prev] as number, sign: 1 });
    }
    kept.push(j);
    prev = j;
  }

  const K = kept.length;
  const D = new Float64Array(K);
  const Z = new Float64Array(K);
  const Z2 = new Float64Array(K);
  for (let t = 0; t < K; t++) {
    D[t] = t === 0 ? 0 : (d[kept[t] as number] as number);
    Z[t] = zz[kept[t] as number] as number;
    Z2[t] = (Z[t] as number) ** 2;
  }
  const roots: SecularRoot[] = [];
  let zsum = 0;
  for (let t = 0; t < K; t++) zsum += Z2[t] as number;
  const work = { zz: zsum, delta: new Float64Array(K) };
  for (let i = 0; i < K; i++) roots.push(secularRoot(D, Z2, i, work));
  // Gu–Eisenstat: the ẑ for which the computed σ are exact, so that the vectors come out orthogonal
  const zh = new Float64Array(K);
  const last = roots[K - 1] as SecularRoot;
  for (let j = 0; j < K; j++) {
    const dj = D[j] as number;
    let p = squaredGap(D, last, j);
    for (let i = 0; i < j; i++) {
      const di = D[i] as number;
      p *= squaredGap(D, roots[i] as SecularRoot, j) / ((di - dj) * (di + dj));
    }
    for (let i = j; i < K - 1; i++) {
      const di = D[i + 1] as number;
      p *= squaredGap(D, roots[i] as SecularRoot, j) / ((di - dj) * (di + dj));
    }
    zh[j] = Math.sign(Z[j] as number) * Math.sqrt(Math.max(p, 0));
  }

  // columns in descending σ: the roots (ascending by construction) interleaved with the deflated values
  const cols: { value: number; root: number; defl: number }[] = [];
  for (let i = 0; i < K; i++) {
    const r = roots[i] as SecularRoot;
    const o = D[r.origin] as number;
    cols.push({ value: Math.sqrt(Math.max(o * o + r.mu, 0)), root: i, defl: -1 });
  }
  for (const [i, x] of deflated.entries()) cols.push({ value: x.value, root: -1, defl: i });
  cols.sort((a, b) => b.value - a.value);
  const vi = new Float64Array(K);
  const ui = new Float64Array(K);
  // u and w are filled column by column as column-major arrays (contiguous writes), then transposed
  cols.forEach((col, c) => {
    sigma[c] = col.value;
    if (col.root < 0) {
      const x = deflated[col.defl] as { j: number; sign: number };
      u[c * n + x.j] = x.sign;
      w[c * n + x.j] = 1;
      return;
    }
    // v ∝ (D² − σ²)⁻¹·ẑ, u ∝ M·v: [−1, D₁·v₁, D₂·v₂, …]
    const root = roots[col.root] as SecularRoot;
    let vn = 0;
    let un = 1;
    ui[0] = -1;
    for (let t = 0; t < K; t++) {
      const v = -(zh[t] as number) / squaredGap(D, root, t);
      vi[t] = v;
      vn += v * v;
      if (t > 0) {
        const x = (D[t] as number) * v;
        ui[t] = x;
        un += x * x;
      }
    }
    vn = 1 / Math.sqrt(vn);
    un = 1 / Math.sqrt(un);
    const co = c * n;
    for (let t = 0; t < K; t++) {
      const row = kept[t] as number;
      u[co + row] = (ui[t] as number) * un;
      w[co + row] = (vi[t] as number) * vn;
    }
  });
  transposeInPlace(u, n);
  transposeInPlace(w, n);
  // undo the deflating rotations, last first: u ← L·u and w ← R·w
  for (let q = rotations.length - 1; q >= 0; q--) {
    const { a, b, c, sn, both } = rotations[q] as (typeof rotations)[number];
    const ra = a * n;
    const rb = b * n;
    for (let col = 0; col < n; col++) {
      const xa = w[ra + col] as number;
      const xb = w[rb + col] as number;
      if (both) {
        w[ra + col] = c * xa + sn * xb;
        w[rb + col] = c * xb - sn * xa;
      } else {
        w[ra + col] = c * xa - sn * xb;
        w[rb + col] = sn * xa + c * xb;
      }
    }
    if (both) {
      for (let col = 0; col < n; col++) {
        const xa = u[ra + col] as number;
        const xb = u[rb + col] as number;
        u[ra + col] = c * xa + sn * xb;
        u[rb + col] = c * xb - sn * xa;
      }
    }
  }
  return { sigma, u, w };
}

/** A node's singular vectors: float64 row-major arrays, or float32 tensors on the backend (u null when not wanted). */
type Vectors =
  | { u: Float64Array | null; w: Float64Array; tensors: false }
  | { u: tf.Tensor2D | null; w: tf.Tensor2D; tensors: true };

/** The SVD of one node's n×m bidiagonal block (m = n + sqre): B = U·[diag(σ) 0]·Wᵀ, σ descending, W's last column null when m > n. */
interface Node {
  n: number;
  m: number;
  sigma: Float64Array;
  /** first and last rows of W, in float64 */
  first: Float64Array;
  last: Float64Array;
  vectors: Vectors;
}

/** Options of {@link bidiagonalDc}. */
export interface BidiagonalDcOptions {
  /** Nodes with at least this many rows keep their vectors as tensors on the backend. Default 128. */
  tensorFrom?: number;
  /** Leaves (decomposed densely in float64) have at most this many rows. Default 25. */
  leafSize?: number;
  /** Called between joins: may throw to cancel, may yield to the event loop. */
  between?: (rowsJoined: number) => Promise<void>;
  /** Compute the left singular vectors too. Default true. */
  left?: boolean;
}

function leaf(d: Float64Array, e: Float64Array, lo: number, n: number, sqre: number, left: boolean): Node {
  const m = n + sqre;
  const a = new Float64Array(n * m);
  for (let r = 0; r < n; r++) {
    a[r * m + r] = d[lo + r] as number;
    if (r + 1 < m) a[r * m + r + 1] = e[lo + r] as number;
  }
  const r = svd64({ rows: n, cols: m, data: a }, sqre === 1, 'svd');
  // W = Vhᵀ, m×m
  const w = new Float64Array(m * m);
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) w[i * m + j] = r.Vh.data[j * m + i] as number;
  return {
    n,
    m,
    sigma: r.S,
    first: w.slice(0, m),
    last: w.slice((m - 1) * m),
    vectors: { u: left ? r.U.data : null, w, tensors: false },
  };
}

function disposeVectors(v: Vectors): void {
  if (v.tensors) tf.dispose(v.u ? [v.u, v.w] : [v.w]);
}

/** out[rows r0.., :] = X (p×p block of rows) · Y[y0 .. y0+p, :] for row-major X (p×p) and Y (·×cols). */
function timesRows(
  out: Float64Array,
  r0: number,
  x: Float64Array,
  p: number,
  y: Float64Array,
  y0: number,
  cols: number,
) {
  // four rows of y per pass over out's row, added in the same order as one at a time
  for (let i = 0; i < p; i++) {
    const o = (r0 + i) * cols;
    let t = 0;
    for (; t + 4 <= p; t += 4) {
      const f0 = x[i * p + t] as number;
      const f1 = x[i * p + t + 1] as number;
      const f2 = x[i * p + t + 2] as number;
      const f3 = x[i * p + t + 3] as number;
      const y0o = (y0 + t) * cols;
      const y1o = y0o + cols;
      const y2o = y1o + cols;
      const y3o = y2o + cols;
      for (let c = 0; c < cols; c++) {
        let acc = out[o + c] as number;
        acc += f0 * (y[y0o + c] as number);
        acc += f1 * (y[y1o + c] as number);
        acc += f2 * (y[y2o + c] as number);
        acc += f3 * (y[y3o + c] as number);
        out[o + c] = acc;
      }
    }
    for (; t < p; t++) {
      const f = x[i * p + t] as number;
      if (f === 0) continue;
      const yo = (y0 + t) * cols;
      for (let c = 0; c < cols; c++) out[o + c] = (out[o + c] as number) + f * (y[yo + c] as number);
    }
  }
}

function asTensors(node: Node): { u: tf.Tensor2D | null; w: tf.Tensor2D } {
  const v = node.vectors;
  if (v.tensors) return v;
  return {
    u: v.u ? tf.tensor2d(Float32Array.from(v.u), [node.n, node.n]) : null,
    w: tf.tensor2d(Float32Array.from(v.w), [node.m, node.m]),
  };
}

function rowsOf(x: Float64Array, cols: number, r0: number, r1: number): tf.Tensor2D {
  return tf.tensor2d(Float32Array.from(x.subarray(r0 * cols, r1 * cols)), [r1 - r0, cols]);
}

async function solveNode(
  d: Float64Array,
  e: Float64Array,
  lo: number,
  n: number,
  sqre: number,
  o: Required<BidiagonalDcOptions>,
): Promise<Node> {
  if (n <= o.leafSize) return leaf(d, e, lo, n, sqre, o.left);
  const m = n + sqre;
  const k = n >> 1;
  const n2 = n - k - 1;
  const m2 = n2 + sqre;
  const left = await solveNode(d, e, lo, k, 1, o);
  let right: Node;
  try {
    right = await solveNode(d, e, lo + k + 1, n2, sqre, o);
  } catch (err) {
    disposeVectors(left.vectors);
    throw err;
  }
  try {
    const beta = k + 1 < m ? (e[lo + k] as number) : 0;
    return await join(left, right, d[lo + k] as number, beta, n, m, k, m2, sqre, o);
  } finally {
    disposeVectors(left.vectors);
    disposeVectors(right.vectors);
  }
}

async function join(
  left: Node,
  right: Node,
  alpha: number,
  beta: number,
  n: number,
  m: number,
  k: number,
  m2: number,
  sqre: number,
  o: Required<BidiagonalDcOptions>,
): Promise<Node> {
  // The middle row in the halves' bases: z = [α·(W₁'s last row), β·(W₂'s first row)]. W₁'s null column
  // (and W₂'s, when this node is not square) meet in coordinate k, rotated into one.
  const dd = new Float64Array(n);
  const z = new Float64Array(n);
  for (let j = 0; j < k; j++) {
    dd[j] = left.sigma[j] as number;
    z[j] = alpha * (left.last[j] as number);
  }
  for (let j = 0; j < n - k - 1; j++) {
    dd[k + 1 + j] = right.sigma[j] as number;
    z[k + 1 + j] = beta * (right.first[j] as number);
  }
  const za = alpha * (left.last[k] as number);
  const zb = sqre ? beta * (right.first[m2 - 1] as number) : 0;
  const zk = Math.hypot(za, zb);
  const c0 = zk === 0 ? 1 : za / zk;
  const s0 = zk === 0 ? 0 : zb / zk;
  // a square node has no second null column: its middle coordinate keeps α's sign
  z[k] = sqre ? zk : za;
  const arrow = arrowSvd(dd, z, k);
  const uh = arrow.u;
  // Ŵ (m×m): the arrow's right vectors, with the null-column rotation of coordinates k and m−1
  let wh: Float64Array;
  if (!sqre) wh = arrow.w;
  else {
    wh = new Float64Array(m * m);
    for (let r = 0; r < n; r++) wh.set(arrow.w.subarray(r * n, (r + 1) * n), r * m);
    for (let c = 0; c < n; c++) {
      const x = arrow.w[k * n + c] as number;
      wh[k * m + c] = c0 * x;
      wh[(m - 1) * m + c] = s0 * x;
    }
    wh[k * m + m - 1] = -s0;
    wh[(m - 1) * m + m - 1] = c0;
  }
  // first row of W = W₁'s first row · Ŵ[0..k], last row = W₂'s last row · Ŵ[k+1..]
  const first = new Float64Array(m);
  const last = new Float64Array(m);
  for (let t = 0; t <= k; t++) {
    const f = left.first[t] as number;
    if (f !== 0) for (let c = 0; c < m; c++) first[c] = (first[c] as number) + f * (wh[t * m + c] as number);
  }
  for (let t = 0; t < m2; t++) {
    const f = right.last[t] as number;
    if (f !== 0) for (let c = 0; c < m; c++) last[c] = (last[c] as number) + f * (wh[(k + 1 + t) * m + c] as number);
  }
  let vectors: Vectors;
  if (n < o.tensorFrom && !left.vectors.tensors && !right.vectors.tensors) {
    let u: Float64Array | null = null;
    if (o.left && left.vectors.u && right.vectors.u) {
      u = new Float64Array(n * n);
      timesRows(u, 0, left.vectors.u, k, uh, 0, n);
      u.set(uh.subarray(k * n, (k + 1) * n), k * n);
      timesRows(u, k + 1, right.vectors.u, n - k - 1, uh, k + 1, n);
    }
    const w = new Float64Array(m * m);
    timesRows(w, 0, left.vectors.w, k + 1, wh, 0, m);
    timesRows(w, k + 1, right.vectors.w, m2, wh, k + 1, m);
    vectors = { u, w, tensors: false };
  } else {
    const l = asTensors(left);
    const r = asTensors(right);
    try {
      const lu = l.u;
      const ru = r.u;
      const u =
        lu && ru
          ? (tf.tidy(() =>
              tf.concat([
                tf.matMul(lu, rowsOf(uh, n, 0, k)),
                rowsOf(uh, n, k, k + 1),
                tf.matMul(ru, rowsOf(uh, n, k + 1, n)),
              ]),
            ) as tf.Tensor2D)
          : null;
      const w = tf.tidy(() =>
        tf.concat([tf.matMul(l.w, rowsOf(wh, m, 0, k + 1)), tf.matMul(r.w, rowsOf(wh, m, k + 1, m))]),
      ) as tf.Tensor2D;
      vectors = { u, w, tensors: true };
    } finally {
      if (!left.vectors.tensors) tf.dispose(l.u ? [l.u, l.w] : [l.w]);
      if (!right.vectors.tensors) tf.dispose(r.u ? [r.u, r.w] : [r.w]);
    }
  }
  await o.between(n);
  return { n, m, sigma: arrow.sigma, first, last, vectors };
}

/**
 * SVD of the n×n upper-bidiagonal matrix with diagonal d and superdiagonal e (length n−1):
 * B = U·diag(σ)·Wᵀ with σ descending. U and W are float64 row-major arrays when n is below
 * `tensorFrom`, float32 tensors on the active backend otherwise (the caller disposes them).
 * @internal
 */
export async function bidiagonalDc(
  d: Float64Array,
  e: Float64Array,
  options: BidiagonalDcOptions = {},
): Promise<{ sigma: Float64Array; vectors: Vectors }> {
  const o: Required<BidiagonalDcOptions> = {
    tensorFrom: options.tensorFrom ?? 128,
    leafSize: Math.max(options.leafSize ?? 25, 3),
    between: options.between ?? (async () => {}),
    left: options.left ?? true,
  };
  const node = await solveNode(d, e, 0, d.length, 0, o);
  return { sigma: node.sigma, vectors: node.vectors };
}
