/**
 * Householder tridiagonalisation of a symmetric tensor, blocked as LAPACK's dsytrd/dlatrd (lower
 * triangle): each panel of b columns is reduced in float64 here, with one product of the (symmetric)
 * trailing matrix with a vector per column on the backend, and the trailing matrix is updated once per
 * panel by a rank-2b product on the backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ReflectorBlock } from './block-reflectors';
import type { BlockedOptions } from './bidiagonalize';
import { makeReflector } from './householder';
import { dotColumns, subtractColumns } from './panel-kernels';
import { readBlock, subBlock } from './tensor-blocks';

/** A = Q·T·Qᵀ with T symmetric tridiagonal (diagonal d, off-diagonal e) and Q = H₀·H₁·… in blocks. */
export interface Tridiagonal {
  d: Float64Array;
  e: Float64Array;
  /** reflector i acts on coordinates i+1.. */
  blocks: ReflectorBlock[];
}

type Product = (v: Float64Array) => Promise<Float64Array>;

/** T·v for the panel's symmetric trailing matrix T: as vᵀ·T, the product tfjs-wasm does fastest. */
function tensorProduct(t: tf.Tensor2D): Product {
  const n = t.shape[0];
  return async (v) => {
    const y = tf.tidy(() => tf.matMul(tf.tensor2d(Float32Array.from(v), [1, n]), t));
    const out = Float64Array.from((await y.data()) as Float32Array);
    y.dispose();
    return out;
  };
}

function arrayProduct(a: Float64Array, n: number): Product {
  return async (v) => {
    const y = new Float64Array(n);
    for (let r = 0; r < n; r++) {
      const f = v[r] as number;
      if (f === 0) continue;
      const o = r * n;
      for (let c = 0; c < n; c++) y[c] = (y[c] as number) + f * (a[o + c] as number);
    }
    return y;
  };
}

/**
 * One dlatrd panel: reduces the first b columns of the n×n trailing matrix whose first columns are
 * `p` (n×b, column-major), returning W of the update T[b:, b:] −= V·Wᵀ + W·Vᵀ and the τ.
 */
async function panel(
  p: Float64Array,
  n: number,
  b: number,
  product: Product,
  d: Float64Array,
  e: Float64Array,
  at: number,
) {
  const w = new Float64Array(n * b); // column-major
  const taus = new Float64Array(b);
  const f = new Float64Array(b);
  const g = new Float64Array(b);
  for (let i = 0; i < b; i++) {
    const pc = i * n;
    // 1. column i, rows i..: −= V[i:, 0:i]·W[i, 0:i]ᵀ + W[i:, 0:i]·V[i, 0:i]ᵀ
    for (let c = 0; c < i; c++) {
      f[c] = w[c * n + i] as number;
      g[c] = p[c * n + i] as number;
    }
    subtractColumns(p, pc, p, n, f, i, i, n);
    subtractColumns(p, pc, w, n, g, i, i, n);
    d[at + i] = p[pc + i] as number;
    if (i === n - 1) break;
    // 2. the reflector Hᵢ zeroes column i below the subdiagonal
    const h = makeReflector(p, pc + i + 1, n - i - 1);
    taus[i] = h.tau;
    e[at + i] = h.beta;
    p[pc + i + 1] = 1;
    // 3. W[i+1:, i] = τ·(T[i+1:, i+1:]·v − V·(Wᵀv) − W·(Vᵀv)), then w −= (τ/2)(wᵀv)·v
    const vfull = new Float64Array(n);
    vfull.set(p.subarray(pc + i + 1, pc + n), i + 1);
    const big = await product(vfull);
    const wc = i * n;
    for (let q = i + 1; q < n; q++) w[wc + q] = big[q] as number;
    dotColumns(f, w, n, p, pc, i, i + 1, n);
    dotColumns(g, p, n, p, pc, i, i + 1, n);
    subtractColumns(w, wc, p, n, f, i, i + 1, n);
    subtractColumns(w, wc, w, n, g, i, i + 1, n);
    let dot = 0;
    for (let q = i + 1; q < n; q++) {
      w[wc + q] = (w[wc + q] as number) * h.tau;
      dot += (w[wc + q] as number) * (p[pc + q] as number);
    }
    const alpha = -0.5 * h.tau * dot;
    for (let q = i + 1; q < n; q++) w[wc + q] = (w[wc + q] as number) + alpha * (p[pc + q] as number);
  }
  return { w, taus };
}

/**
 * Tridiagonalises a symmetric n×n tensor (only its lower triangle is meant, but the matrix must be
 * stored whole and symmetric) on the active backend. The input is not changed.
 * @internal
 */
export async function tridiagonalize(a: tf.Tensor2D, options: BlockedOptions = {}): Promise<Tridiagonal> {
  const n = a.shape[0];
  const nb = options.block ?? 32;
  const d = new Float64Array(n);
  const e = new Float64Array(Math.max(n - 1, 0));
  const blocks: ReflectorBlock[] = [];
  let t: tf.Tensor2D = a;
  let k = 0;
  try {
    while (k < n) {
      const rows = n - k;
      const small = rows <= 2 * nb || rows * rows <= 1 << 16;
      const b = small ? rows : nb;
      const p = await readBlock(t, 0, 0, rows, b, true);
      const product = small ? arrayProduct(await readBlock(t, 0, 0, rows, rows), rows) : tensorProduct(t);
      const { w, taus } = await panel(p, rows, b, product, d, e, k);
      // reflector i of the panel acts on local rows i+1..; as a block on rows k+1.., its column starts at row i
      const nr = Math.min(b, rows - 1);
      if (nr > 0) {
        const rr = rows - 1;
        const v = new Float32Array(rr * nr);
        for (let i = 0; i < nr; i++) {
          v[i * rr + i] = 1;
          for (let q = i + 2; q < rows; q++) v[i * rr + q - 1] = p[i * rows + q] as number;
        }
        blocks.push({ offset: k + 1, rows: rr, v, taus: taus.slice(0, nr) });
      }
      if (small) break;
      // T[b:, b:] −= [V | W]·[Wᵀ; Vᵀ]
      const m = rows - b;
      const lhs = new Float32Array(m * 2 * b);
      const rhs = new Float32Array(2 * b * m);
      for (let q = 0; q < m; q++)
        for (let c = 0; c < b; c++) {
          const vq = p[c * rows + b + q] as number;
          const wq = w[c * rows + b + q] as number;
          lhs[q * 2 * b + c] = vq;
          lhs[q * 2 * b + b + c] = wq;
          rhs[c * m + q] = wq;
          rhs[(b + c) * m + q] = vq;
        }
      const prev = t;
      t = tf.tidy(() =>
        tf.sub(subBlock(prev, b, b, m, m), tf.matMul(tf.tensor2d(lhs, [m, 2 * b]), tf.tensor2d(rhs, [2 * b, m]))),
      ) as tf.Tensor2D;
      if (prev !== a) prev.dispose();
      k += b;
      await options.between?.(k, n);
    }
  } finally {
    if (t !== a) t.dispose();
  }
  await options.between?.(n, n);
  return { d, e, blocks };
}
