import { type Matrix64, matmul64, matrix64, svd } from '@lora/linalg';

/**
 * PEFT 0.21's `reduce_intruder_dimension` on one matrix, literally — three dense SVDs, in float64 —
 * as the oracle for cases no fixture covers (shapes, convolutions, the Krylov path's stopping).
 * W (m×n) and ΔW = s·L·R in the stored layout; returns the cosines, the intruders and s·L′·R′.
 */
export function referenceReduction(
  w: Matrix64,
  left: Matrix64,
  right: Matrix64,
  s: number,
  o: { topK: number; thresholdEpsilon: number; mitigationLambda: number },
): { cosine: number[]; intruders: number[]; delta: Matrix64 } {
  const { rows: m, cols: n } = w;
  const r = left.cols;
  const delta = matmul64(left, right);
  const merged = matrix64(
    m,
    n,
    w.data.map((v, i) => v + s * (delta.data[i] as number)),
  );
  const base = svd(w);
  const mg = svd(merged);
  const k = Math.min(m, n);
  const cosine: number[] = [];
  for (let i = 0; i < Math.min(o.topK, k); i++) {
    let best = 0;
    for (let j = 0; j < k; j++) {
      let d = 0;
      for (let a = 0; a < m; a++) d += (mg.U.data[a * k + i] as number) * (base.U.data[a * k + j] as number);
      best = Math.max(best, Math.abs(d));
    }
    cosine.push(best);
  }
  const intruders = cosine.flatMap((c, i) => (c < o.thresholdEpsilon ? [i] : []));
  if (intruders.length === 0)
    return {
      cosine,
      intruders,
      delta: matrix64(
        m,
        n,
        delta.data.map((v) => v * s),
      ),
    };
  const mitigated = matrix64(m, n, Float64Array.from(merged.data));
  for (const i of intruders)
    for (let a = 0; a < m; a++)
      for (let b = 0; b < n; b++)
        mitigated.data[a * n + b] =
          (mitigated.data[a * n + b] as number) +
          (o.mitigationLambda - 1) *
            (mg.S[i] as number) *
            (mg.U.data[a * k + i] as number) *
            (mg.Vh.data[i * n + b] as number);
  const dW = matrix64(
    m,
    n,
    mitigated.data.map((v, i) => (v - (w.data[i] as number)) / s),
  );
  const d = svd(dW);
  const out = matrix64(m, n);
  for (let t = 0; t < Math.min(r, d.S.length); t++)
    for (let a = 0; a < m; a++)
      for (let b = 0; b < n; b++)
        out.data[a * n + b] =
          (out.data[a * n + b] as number) +
          s * (d.S[t] as number) * (d.U.data[a * k + t] as number) * (d.Vh.data[t * n + b] as number);
  return { cosine, intruders, delta: out };
}

/** A matrix of N(0, scale²)-like values from a small LCG (reproducible, no tensors). */
export function randomMatrix(rows: number, cols: number, seed: number, scale = 1): Matrix64 {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(1664525, state) + 1013904223) >>> 0;
    return state / 4294967296;
  };
  const data = new Float64Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = scale * (next() + next() + next() + next() - 2) * Math.sqrt(3);
  return matrix64(rows, cols, data);
}
