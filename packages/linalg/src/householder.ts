/**
 * Householder reflectors in LAPACK's normalisation (dlarfg): H = I − τ·v·vᵀ with v[0] = 1, chosen so
 * that H·x = β·e₁. Vectors live in column-major work arrays; everything here is float64.
 */

/** ‖x[off .. off+len)‖₂ without overflow or underflow (scaled sum of squares). */
export function safeNorm(x: Float64Array, off: number, len: number, stride = 1): number {
  let scale = 0;
  let ssq = 1;
  for (let i = 0; i < len; i++) {
    const v = x[off + i * stride] as number;
    if (v !== 0) {
      const a = Math.abs(v);
      if (scale < a) {
        ssq = 1 + ssq * (scale / a) * (scale / a);
        scale = a;
      } else {
        ssq += (a / scale) * (a / scale);
      }
    }
  }
  return scale * Math.sqrt(ssq);
}

/**
 * Makes the reflector for x = w[off .. off+len). Overwrites w[off+1 ..] with v[1 ..] (v[0] = 1 is
 * implicit) and returns τ and β; w[off] is left for the caller, which stores β there or elsewhere.
 */
export function makeReflector(w: Float64Array, off: number, len: number): { tau: number; beta: number } {
  const alpha = w[off] as number;
  if (len <= 1) return { tau: 0, beta: alpha };
  const xnorm = safeNorm(w, off + 1, len - 1);
  if (xnorm === 0) return { tau: 0, beta: alpha };
  const norm = Math.hypot(alpha, xnorm);
  const beta = alpha >= 0 ? -norm : norm;
  const tau = (beta - alpha) / beta;
  const scale = 1 / (alpha - beta);
  for (let i = 1; i < len; i++) w[off + i] = (w[off + i] as number) * scale;
  return { tau, beta };
}

/**
 * Applies H = I − τ·v·vᵀ from the left to `count` columns of a column-major array: column c's
 * segment starts at `yOff + c * ld` and has `len` entries; v starts at w[vOff] (v[0] = 1).
 */
export function applyReflectorLeft(
  w: Float64Array,
  vOff: number,
  len: number,
  tau: number,
  y: Float64Array,
  yOff: number,
  ld: number,
  count: number,
): void {
  if (tau === 0) return;
  for (let c = 0; c < count; c++) {
    const o = yOff + c * ld;
    let s = y[o] as number;
    for (let i = 1; i < len; i++) s += (w[vOff + i] as number) * (y[o + i] as number);
    s *= tau;
    if (s === 0) continue;
    y[o] = (y[o] as number) - s;
    for (let i = 1; i < len; i++) y[o + i] = (y[o + i] as number) - s * (w[vOff + i] as number);
  }
}

/**
 * Applies H = I − τ·v·vᵀ from the right to rows [r0, r0+rows) and columns [c0, c0+len) of a
 * column-major array with leading dimension ld; v (length len, v[0] = 1) is given densely in `v`.
 * Done column by column (y = Y·v, then Y −= τ·y·vᵀ) so that memory is walked contiguously.
 */
export function applyReflectorRight(
  v: Float64Array,
  len: number,
  tau: number,
  y: Float64Array,
  ld: number,
  r0: number,
  rows: number,
  c0: number,
  scratch: Float64Array,
): void {
  if (tau === 0) return;
  scratch.fill(0, 0, rows);
  for (let j = 0; j < len; j++) {
    const vj = v[j] as number;
    if (vj === 0) continue;
    const o = (c0 + j) * ld + r0;
    for (let i = 0; i < rows; i++) scratch[i] = (scratch[i] as number) + vj * (y[o + i] as number);
  }
  for (let j = 0; j < len; j++) {
    const f = tau * (v[j] as number);
    if (f === 0) continue;
    const o = (c0 + j) * ld + r0;
    for (let i = 0; i < rows; i++) y[o + i] = (y[o + i] as number) - f * (scratch[i] as number);
  }
}

/**
 * Forms Q = H₀·H₁·…·H₍ₖ₋₁₎ applied to the first `qCols` columns of the m×m identity (column-major
 * m×qCols), from reflectors stored below the diagonal of the column-major m×k array `w` (v[0] = 1
 * implicit) with factors `taus`. Backward accumulation, so each reflector touches only its trailing block.
 */
export function accumulateReflectors(w: Float64Array, m: number, taus: Float64Array, qCols: number): Float64Array {
  const q = new Float64Array(m * qCols);
  for (let i = 0; i < qCols; i++) q[i * m + i] = 1;
  for (let j = taus.length - 1; j >= 0; j--) {
    const off = j * m + j;
    const saved = w[off] as number;
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, taus[j] as number, q, j * m + j, m, qCols - j);
    w[off] = saved;
  }
  return q;
}

/**
 * Householder reflectors of a column-major m×n array, in place (R on and above the diagonal, the
 * reflectors' tails below, LAPACK's geqrf layout), and their τ. Q itself is not formed: see
 * {@link applyQ}.
 * @internal
 */
export function householderFactor(
  a: Float64Array,
  m: number,
  n: number,
): { w: Float64Array; taus: Float64Array; k: number } {
  const w = a;
  const k = Math.min(m, n);
  const taus = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const off = j * m + j;
    const { tau, beta } = makeReflector(w, off, m - j);
    taus[j] = tau;
    // apply to the trailing columns, with v[0] = 1 in place of the diagonal for the duration
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, tau, w, (j + 1) * m + j, m, n - j - 1);
    w[off] = beta;
  }
  return { w, taus, k };
}

/**
 * Q·X for the Q of {@link householderFactor} (m×k) and X given as its first k rows (k×p, row-major):
 * an m×p column-major result, O(m·k·p) — for p < k less than forming Q (O(m·k²)) and multiplying.
 * @internal
 */
export function applyQ(w: Float64Array, m: number, taus: Float64Array, x: Float64Array, p: number): Float64Array {
  const k = taus.length;
  const y = new Float64Array(m * p);
  for (let c = 0; c < p; c++) for (let i = 0; i < k; i++) y[c * m + i] = x[i * p + c] as number;
  for (let j = k - 1; j >= 0; j--) {
    const off = j * m + j;
    const saved = w[off] as number;
    w[off] = 1;
    applyReflectorLeft(w, off, m - j, taus[j] as number, y, j, m, p);
    w[off] = saved;
  }
  return y;
}
