/**
 * The level-2 kernels of the blocked reductions' panels, on column-major float64 arrays (a row-major
 * array's rows are its columns here): dot products with a vector and updates by a combination of columns.
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
  for (let c = 0; c < count; c++) {
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
  for (let c = 0; c < count; c++) {
    const g = f[c] as number;
    if (g === 0) continue;
    const o = c * ld;
    for (let q = q0; q < q1; q++) out[oo + q] = (out[oo + q] as number) - g * (x[o + q] as number);
  }
}
