/**
 * The secular equation of a rank-one update, the heart of divide-and-conquer SVD:
 *
 *   g(λ) = 1 + Σⱼ zⱼ² / (dⱼ² − λ) = 0,   0 = d₀ < d₁ < … < d₍ₖ₋₁₎,  all zⱼ ≠ 0,
 *
 * whose K roots λᵢ = σᵢ² interlace the poles: dᵢ < σᵢ < dᵢ₊₁, and d₍ₖ₋₁₎ < σ₍ₖ₋₁₎ ≤ √(d₍ₖ₋₁₎² + ‖z‖²).
 * They are the squared singular values of the "arrow" matrix e₀·zᵀ + diag(d) (Gu & Eisenstat 1995).
 *
 * Each root is found relative to its nearer pole (its origin o): λ = d_o² + μ, so that the differences
 * σᵢ² − dⱼ² = μ − (dⱼ − d_o)(dⱼ + d_o) that the singular vectors need keep full relative accuracy even
 * when σᵢ is within a few ulps of a pole. The iteration fits the two neighbouring poles with a rational
 * model (matching value and slope of each side's sum), as the "middle way" of Li (1993), and falls back to
 * bisection of a maintained bracket whenever a step would leave it; it always terminates.
 */

const EPS = 2 ** -53;

/** A root of the secular equation: σ² = d[origin]² + mu. */
export interface SecularRoot {
  origin: number;
  mu: number;
}

/** σᵢ² − dⱼ², accurately, from root i's representation. */
export function squaredGap(d: Float64Array, root: SecularRoot, j: number): number {
  const o = d[root.origin] as number;
  const dj = d[j] as number;
  return root.mu - (dj - o) * (dj + o);
}

/**
 * Solves for root i (0-based) of the secular equation with poles d (ascending, d[0] = 0) and squared
 * weights z2 (all positive), K = d.length. `work` (for the K roots of one equation): Σ z2 and a
 * scratch array of length K, so that they are not made again for each root.
 */
export function secularRoot(
  d: Float64Array,
  z2: Float64Array,
  i: number,
  work?: { zz: number; delta: Float64Array },
): SecularRoot {
  const K = d.length;
  let origin: number;
  let lo: number;
  let hi: number;
  let zz = work?.zz ?? 0;
  if (!work) for (let j = 0; j < K; j++) zz += z2[j] as number;
  if (i < K - 1) {
    // Which half of (dᵢ², dᵢ₊₁²) holds the root decides the origin: g is increasing, so g(mid) ≥ 0
    // puts the root in the left half.
    const dl = d[i] as number;
    const dr = d[i + 1] as number;
    const width = (dr - dl) * (dr + dl);
    const mid = width / 2;
    let g = 1;
    for (let j = 0; j < K; j++) {
      const dj = d[j] as number;
      g += (z2[j] as number) / ((dj - dl) * (dj + dl) - mid);
    }
    if (g >= 0) {
      origin = i;
      lo = 0;
      hi = mid;
    } else {
      origin = i + 1;
      lo = -mid;
      hi = 0;
    }
  } else {
    origin = K - 1;
    lo = 0;
    hi = zz;
  }
  const o = d[origin] as number;
  // poles relative to the origin: δⱼ = dⱼ² − d_o², computed as a product of a difference and a sum
  const delta = work?.delta ?? new Float64Array(K);
  for (let j = 0; j < K; j++) {
    const dj = d[j] as number;
    delta[j] = (dj - o) * (dj + o);
  }
  const left = i; // poles 0..i lie left of the root, i+1.. right of it
  let mu = (lo + hi) / 2;
  for (let iter = 0; iter < 400; iter++) {
    let psi = 0;
    let dpsi = 0;
    let phi = 0;
    let dphi = 0;
    for (let j = 0; j <= left; j++) {
      const t = 1 / ((delta[j] as number) - mu);
      const w = (z2[j] as number) * t;
      psi += w;
      dpsi += w * t;
    }
    for (let j = left + 1; j < K; j++) {
      const t = 1 / ((delta[j] as number) - mu);
      const w = (z2[j] as number) * t;
      phi += w;
      dphi += w * t;
    }
    const g = 1 + psi + phi;
    if (g === 0) break;
    if (g < 0) lo = mu;
    else hi = mu;
    // g is known only to about its rounding error; below that, μ cannot improve
    if (Math.abs(g) <= 8 * EPS * (1 + Math.abs(psi) + phi)) break;
    if (hi - lo <= 4 * EPS * Math.max(Math.abs(lo), Math.abs(hi))) break;
    const dl = (delta[left] as number) - mu;
    const b = dpsi * dl * dl;
    const a = psi - b / dl;
    let eta = Number.NaN;
    if (left < K - 1) {
      const dr = (delta[left + 1] as number) - mu;
      const B = dphi * dr * dr;
      const A = phi - B / dr;
      const c = 1 + a + A;
      // c·η² − bq·η + Δl·Δr·g = 0: the root of the two-pole model between the poles
      const bq = c * (dl + dr) + b + B;
      const cc = dl * dr * g;
      if (c === 0) eta = cc / bq;
      else {
        const disc = Math.max(bq * bq - 4 * c * cc, 0);
        const q = bq >= 0 ? (bq + Math.sqrt(disc)) / 2 : (bq - Math.sqrt(disc)) / 2;
        const e1 = q / c;
        const e2 = q === 0 ? Number.NaN : cc / q;
        const in1 = mu + e1 > lo && mu + e1 < hi;
        const in2 = mu + e2 > lo && mu + e2 < hi;
        eta = in1 && in2 ? (Math.abs(e1) < Math.abs(e2) ? e1 : e2) : in1 ? e1 : e2;
      }
    } else {
      const c = 1 + a;
      if (c > 0) eta = dl + b / c;
    }
    let next = mu + eta;
    if (!(next > lo && next < hi)) next = (lo + hi) / 2;
    if (next === mu) break;
    mu = next;
  }
  return { origin, mu };
}
