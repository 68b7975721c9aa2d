/**
 * The level-2 kernels of the blocked reductions' panels, on column-major float64 arrays (a row-major
 * array's rows are its columns here): dot products with a vector and updates by a combination of columns.
 * Both take four columns per pass over the vector (one load and store of `out`, or of `v`, for four
 * columns' work); each column's sum is accumulated in the same order as one column at a time, so the
 * results do not depend on the grouping.
 */

/** f[c] = Σ_{q0 ≤ q < q1} x[c·ld + q]·v[vo + q], for the first `count` columns of x. */
export function dotColumns(
  f: Float64Array,
  x: Float64Array,
  ld: number,
  v: Float64Array,
  vo: number,
  count: number,
  q0: number,
  q1: number,
): void {
  let c = 0;
  for (; c + 4 <= count; c += 4) {
    const o0 = c * ld;
    const o1 = o0 + ld;
    const o2 = o1 + ld;
    const o3 = o2 + ld;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let q = q0; q < q1; q++) {
      const t = v[vo + q] as number;
      s0 += (x[o0 + q] as number) * t;
      s1 += (x[o1 + q] as number) * t;
      s2 += (x[o2 + q] as number) * t;
      s3 += (x[o3 + q] as number) * t;
    }
    f[c] = s0;
    f[c + 1] = s1;
    f[c + 2] = s2;
    f[c + 3] = s3;
  }
  for (; c < count; c++) {
    const o = c * ld;
    let s = 0;
    for (let q = q0; q < q1; q++) s += (x[o + q] as number) * (v[vo + q] as number);
    f[c] = s;
  }
}

/** out[oo + q] −= Σ_c f[c]·x[c·ld + q] for q0 ≤ q < q1, over the first `count` columns of x. */
export function subtractColumns(
  out: Float64Array,
  oo: number,
  x: Float64Array,
  ld: number,
  f: Float64Array,
  count: number,
  q0: number,
  q1: number,
): void {
  let c = 0;
  for (; c + 4 <= count; c += 4) {
    const g0 = f[c] as number;
    const g1 = f[c + 1] as number;
    const g2 = f[c + 2] as number;
    const g3 = f[c + 3] as number;
    const o0 = c * ld;
    const o1 = o0 + ld;
    const o2 = o1 + ld;
    const o3 = o2 + ld;
    for (let q = q0; q < q1; q++) {
      // one column after another, as the single-column loop rounds
      let s = out[oo + q] as number;
      s -= g0 * (x[o0 + q] as number);
      s -= g1 * (x[o1 + q] as number);
      s -= g2 * (x[o2 + q] as number);
      s -= g3 * (x[o3 + q] as number);
      out[oo + q] = s;
    }
  }
  for (; c < count; c++) {
    const g = f[c] as number;
    if (g === 0) continue;
    const o = c * ld;
    for (let q = q0; q < q1; q++) out[oo + q] = (out[oo + q] as number) - g * (x[o + q] as number);
  }
}
