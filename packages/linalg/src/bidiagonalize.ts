/**
 * Householder bidiagonalisation and QR of large tensors, blocked as LAPACK's dgebrd/dlabrd and
 * dgeqrf: each panel of b columns (and, for the bidiagonalisation, b rows) is factored in float64
 * here, and the rest of the matrix is updated once per panel by matrix products on the active
 * backend. The bidiagonalisation's panel still needs two products of the whole trailing matrix with a
 * vector per column (its level-2 half, as in LAPACK); those run on the backend too.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ReflectorBlock } from './block-reflectors';
import { makeReflector } from './householder';
import { dotColumns, subtractColumns } from './panel-kernels';
import { readBlock, subBlock } from './tensor-blocks';
import { heapGemv } from './wasm-gemv';

/** A tall matrix reduced to upper-bidiagonal form: A = Q·B·Pᵀ. */
export interface Bidiagonal {
  m: number;
  n: number;
  d: Float64Array;
  e: Float64Array;
  /** Q = H₀·H₁·…, as blocks of reflectors on rows k.. */
  left: ReflectorBlock[];
  /** P = G₀·G₁·…, as blocks of reflectors on coordinates k+1.. */
  right: ReflectorBlock[];
}

/** Products of the (fixed) trailing matrix of one panel with vectors, however they are best done. */
interface Trailing {
  /** Tᵀ·v for v of length rows (returns length cols) */
  tv(v: Float64Array): Promise<Float64Array>;
  /** T·u for u of length cols (returns length rows; entries before u's first nonzero may be left out) */
  tu(u: Float64Array): Promise<Float64Array>;
  dispose(): void;
}

/**
 * On wasm a product with a transposed operand is slow, and a matrix on the right of a product
 * (XNNPACK's "weights") is packed once and kept: so Tᵀ·v is computed as vᵀ·T and T·u as uᵀ·Tᵀ with
 * Tᵀ formed once per panel. Elsewhere the plain products are used.
 */
function tensorTrailing(t: tf.Tensor2D): Trailing {
  const [rows, cols] = t.shape;
  const wasm = tf.getBackend() === 'wasm';
  const tt = wasm ? (tf.transpose(t) as tf.Tensor2D) : null;
  // wasm and cpu compute eagerly: reading back synchronously saves the promise machinery, 2n times
  const sync = wasm || tf.getBackend() === 'cpu';
  const run = async (x: tf.Tensor2D, f: (x: tf.Tensor2D) => tf.Tensor) => {
    const y = f(x);
    x.dispose();
    const out = Float64Array.from((sync ? y.dataSync() : await y.data()) as Float32Array);
    y.dispose();
    return out;
  };
  return {
    tv: (v) => run(tf.tensor2d(Float32Array.from(v), [1, rows]), (x) => tf.matMul(x, t)),
    tu: (u) =>
      tt
        ? run(tf.tensor2d(Float32Array.from(u), [1, cols]), (x) => tf.matMul(x, tt))
        : run(tf.tensor2d(Float32Array.from(u), [cols, 1]), (x) => tf.matMul(t, x)),
    dispose: () => tt?.dispose(),
  };
}

/**
 * On wasm, the products read T where it lies on the backend's heap ({@link heapGemv}): no transpose,
 * no packing, no tensors per column. Null where those kernels are not available.
 */
function heapTrailing(t: tf.Tensor2D): Trailing | null {
  const k = heapGemv();
  if (!k) return null;
  const [rows, cols] = t.shape;
  const ptr = k.malloc(4 * (rows + cols));
  // the vectors' zero prefixes (rows before the reflector's first, columns up to the row's) are skipped
  const first = (w: Float64Array) => {
    let i = 0;
    while (i < w.length && w[i] === 0) i++;
    return i;
  };
  return {
    tv: async (v) => {
      const heap = new Float32Array(k.memory.buffer, ptr, rows + cols);
      heap.set(v);
      k.gemvT(k.offsetOf(t), rows, cols, cols, ptr, ptr + 4 * rows, first(v));
      return Float64Array.from(heap.subarray(rows));
    },
    tu: async (u) => {
      const heap = new Float32Array(k.memory.buffer, ptr, rows + cols);
      heap.set(u, rows);
      const c0 = first(u);
      // the panel reads rows from u's first nonzero on (i + 1 for the right reflector i)
      k.gemv(k.offsetOf(t), rows, cols, cols, ptr + 4 * rows, ptr, Math.min(c0, rows), c0);
      return Float64Array.from(heap.subarray(0, rows));
    },
    dispose: () => k.free(ptr),
  };
}

/** The same products in float64 on a row-major array (for the last, small panels). */
function arrayTrailing(a: Float64Array, rows: number, cols: number): Trailing {
  return {
    tv: async (v) => {
      const y = new Float64Array(cols);
      for (let r = 0; r < rows; r++) {
        const f = v[r] as number;
        if (f === 0) continue;
        const o = r * cols;
        for (let c = 0; c < cols; c++) y[c] = (y[c] as number) + f * (a[o + c] as number);
      }
      return y;
    },
    tu: async (u) => {
      const x = new Float64Array(rows);
      for (let r = 0; r < rows; r++) {
        let s = 0;
        const o = r * cols;
        for (let c = 0; c < cols; c++) s += (a[o + c] as number) * (u[c] as number);
        x[r] = s;
      }
      return x;
    },
    dispose: () => {},
  };
}

/**
 * One panel of dlabrd on the trailing matrix T (rows×cols, rows ≥ cols): reduces its first b rows and
 * columns, returning the panel's reflectors and the X, Y of the trailing update
 * T[b:, b:] −= V·Yᵀ + X·Uᵀ. `p` (rows×b, column-major) and `r` (b×cols, row-major) hold T's first
 * columns and rows on entry; the big products use `trailing` (the panel's T, never updated).
 */
async function panel(
  p: Float64Array,
  r: Float64Array,
  rows: number,
  cols: number,
  b: number,
  trailing: Trailing,
  d: Float64Array,
  e: Float64Array,
  at: number,
) {
  const x = new Float64Array(rows * b); // column-major
  const y = new Float64Array(cols * b); // column-major; r (row-major b×cols) reads as column-major with ld = cols
  const tauq = new Float64Array(b);
  const taup = new Float64Array(b);
  const f = new Float64Array(b);
  const g = new Float64Array(b);
  for (let i = 0; i < b; i++) {
    // 1. column i, rows i..: −= P[i:, 0:i]·Y[i, 0:i]ᵀ + X[i:, 0:i]·R[0:i, i]
    const pc = i * rows;
    for (let c = 0; c < i; c++) {
      f[c] = y[c * cols + i] as number;
      g[c] = r[c * cols + i] as number;
    }
    subtractColumns(p, pc, p, rows, f, i, i, rows);
    subtractColumns(p, pc, x, rows, g, i, i, rows);
    // 2. the left reflector Hᵢ zeroes column i below the diagonal
    const left = makeReflector(p, pc + i, rows - i);
    tauq[i] = left.tau;
    d[at + i] = left.beta;
    p[pc + i] = 1;
    if (i === cols - 1) break;
    // 3. Y[i+1:, i] = τ·(T[i:, i+1:]ᵀ·v − Y[i+1:, 0:i]·(P[i:, 0:i]ᵀ·v) − R[0:i, i+1:]ᵀ·(X[i:, 0:i]ᵀ·v))
    const vfull = new Float64Array(rows);
    vfull.set(p.subarray(pc + i, pc + rows), i);
    const big = await trailing.tv(vfull);
    const yc = i * cols;
    for (let q = i + 1; q < cols; q++) y[yc + q] = big[q] as number;
    dotColumns(f, p, rows, p, pc, i, i, rows);
    dotColumns(g, x, rows, p, pc, i, i, rows);
    subtractColumns(y, yc, y, cols, f, i, i + 1, cols);
    subtractColumns(y, yc, r, cols, g, i, i + 1, cols);
    for (let q = i + 1; q < cols; q++) y[yc + q] = (y[yc + q] as number) * left.tau;
    // 4. row i, columns i+1..: −= Y[i+1:, 0:i+1]·P[i, 0:i+1]ᵀ + R[0:i, i+1:]ᵀ·X[i, 0:i]ᵀ
    const ri = i * cols;
    for (let c = 0; c <= i; c++) {
      f[c] = p[c * rows + i] as number;
      g[c] = c < i ? (x[c * rows + i] as number) : 0;
    }
    subtractColumns(r, ri, y, cols, f, i + 1, i + 1, cols);
    subtractColumns(r, ri, r, cols, g, i, i + 1, cols);
    // 5. the right reflector Gᵢ zeroes row i right of the superdiagonal
    const right = makeReflector(r, ri + i + 1, cols - i - 1);
    taup[i] = right.tau;
    e[at + i] = right.beta;
    r[ri + i + 1] = 1;
    // 6. X[i+1:, i] = τ·(T[i+1:, i+1:]·u − P[i+1:, 0:i+1]·(Y[i+1:, 0:i+1]ᵀ·u) − X[i+1:, 0:i]·(R[0:i, i+1:]·u))
    const ufull = new Float64Array(cols);
    ufull.set(r.subarray(ri + i + 1, ri + cols), i + 1);
    const bx = await trailing.tu(ufull);
    const xc = i * rows;
    for (let q = i + 1; q < rows; q++) x[xc + q] = bx[q] as number;
    dotColumns(f, y, cols, r, ri, i + 1, i + 1, cols);
    dotColumns(g, r, cols, r, ri, i, i + 1, cols);
    subtractColumns(x, xc, p, rows, f, i + 1, i + 1, rows);
    subtractColumns(x, xc, x, rows, g, i, i + 1, rows);
    for (let q = i + 1; q < rows; q++) x[xc + q] = (x[xc + q] as number) * right.tau;
  }
  return { x, y, tauq, taup };
}

/** The panel's reflectors as blocks: left vectors from P's columns, right ones from R's rows. */
function panelBlocks(
  p: Float64Array,
  r: Float64Array,
  rows: number,
  cols: number,
  b: number,
  k: number,
  tauq: Float64Array,
  taup: Float64Array,
) {
  const v = new Float32Array(rows * b);
  for (let i = 0; i < b; i++) {
    const o = i * rows;
    v[o + i] = 1;
    for (let q = i + 1; q < rows; q++) v[o + q] = p[o + q] as number;
  }
  const left: ReflectorBlock = { offset: k, rows, v, taus: tauq };
  const nr = Math.min(b, cols - 1);
  if (nr <= 0) return { left, right: null };
  // right reflector i acts on coordinates k+i+1..; as a block on coordinates k+1.., column i starts at row i
  const rr = cols - 1;
  const u = new Float32Array(rr * nr);
  for (let i = 0; i < nr; i++) {
    const o = i * rr;
    u[o + i] = 1;
    for (let q = i + 2; q < cols; q++) u[o + q - 1] = r[i * cols + q] as number;
  }
  const right: ReflectorBlock = { offset: k + 1, rows: rr, v: u, taus: taup.slice(0, nr) };
  return { left, right };
}

/** Options shared by the blocked factorisations. */
export interface BlockedOptions {
  /** Columns per panel. Default 32. */
  block?: number;
  /** Called after each panel with the columns done so far: may throw to cancel, may yield. */
  between?: (done: number, total: number) => Promise<void>;
}

/**
 * Bidiagonalises a tall m×n tensor (m ≥ n) on the active backend: A = Q·B·Pᵀ with B upper
 * bidiagonal. The input is not changed.
 * @internal
 */
export async function bidiagonalize(a: tf.Tensor2D, options: BlockedOptions = {}): Promise<Bidiagonal> {
  const [m, n] = a.shape;
  const nb = options.block ?? 32;
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(n - 1, 0));
  const left: ReflectorBlock[] = [];
  const right: ReflectorBlock[] = [];
  let t: tf.Tensor2D = a;
  let k = 0;
  try {
    while (k < n) {
      const rows = m - k;
      const cols = n - k;
      // the last columns: one panel in float64 here, with the products done here too
      const small = cols <= 2 * nb || rows * cols <= 1 << 16;
      const b = small ? cols : nb;
      let p: Float64Array;
      let r: Float64Array;
      let trailing: Trailing;
      let whole: Float64Array | null = null;
      p = await readBlock(t, 0, 0, rows, b, true);
      if (small) {
        whole = await readBlock(t, 0, 0, rows, cols);
        trailing = arrayTrailing(whole, rows, cols);
        r = whole.slice(0, b * cols);
      } else {
        r = await readBlock(t, 0, 0, b, cols);
        trailing = heapTrailing(t) ?? tensorTrailing(t);
      }
      let out: Awaited<ReturnType<typeof panel>>;
      try {
        out = await panel(p, r, rows, cols, b, trailing, d, e, k);
      } finally {
        trailing.dispose();
      }
      const blocks = panelBlocks(p, r, rows, cols, b, k, out.tauq, out.taup);
      left.push(blocks.left);
      if (blocks.right) right.push(blocks.right);
      if (small) {
        if (t !== a) t.dispose();
        t = a;
        await options.between?.(n, n);
        break;
      }
      // T[b:, b:] −= [P | X]·[Yᵀ; R] over the rows and columns past the panel
      const mr = rows - b;
      const nc = cols - b;
      const lhs = new Float32Array(mr * 2 * b);
      for (let q = 0; q < mr; q++)
        for (let c = 0; c < b; c++) {
          lhs[q * 2 * b + c] = p[c * rows + b + q] as number;
          lhs[q * 2 * b + b + c] = out.x[c * rows + b + q] as number;
        }
      const rhs = new Float32Array(2 * b * nc);
      for (let c = 0; c < b; c++)
        for (let q = 0; q < nc; q++) {
          rhs[c * nc + q] = out.y[c * cols + b + q] as number;
          rhs[(b + c) * nc + q] = r[c * cols + b + q] as number;
        }
      const prev = t;
      t = tf.tidy(() =>
        tf.sub(subBlock(prev, b, b, mr, nc), tf.matMul(tf.tensor2d(lhs, [mr, 2 * b]), tf.tensor2d(rhs, [2 * b, nc]))),
      ) as tf.Tensor2D;
      if (prev !== a) prev.dispose();
      k += b;
      await options.between?.(k, n);
    }
  } catch (err) {
    if (t !== a) t.dispose();
    throw err;
  }
  return { m, n, d, e, left, right };
}
