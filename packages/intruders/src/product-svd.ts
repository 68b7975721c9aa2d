import { type Matrix64, matmul64, qr, svd, transpose64 } from '@lora/linalg';

/** The thin SVD of a product L·R: U (m×c), S (c, descending), Vh (c×n), c = min(m, n, inner). */
export interface ProductSvd {
  U: Matrix64;
  S: Float64Array;
  Vh: Matrix64;
}

/**
 * The exact SVD of L·R (L m×c, R c×n) without forming the m×n product, in float64: L = Q₁R₁ and
 * Rᵀ = Q₂R₂ (Householder QR), then the c×c core R₁·R₂ᵀ = Uc·S·Vcᵀ, so L·R = (Q₁Uc)·S·(Q₂Vc)ᵀ.
 * O((m + n)·c²) instead of O(m·n·min(m, n)): what replaces PEFT's SVD of the mitigated ΔW, whose
 * rank is at most r + the number of intruders.
 */
export function svdOfProduct(left: Matrix64, right: Matrix64): ProductSvd {
  const q1 = qr(left);
  const q2 = qr(transpose64(right));
  const core = matmul64(q1.R, q2.R, { transposeB: true });
  const inner = svd(core);
  return { U: matmul64(q1.Q, inner.U), S: inner.S, Vh: matmul64(inner.Vh, q2.Q, { transposeB: true }) };
}
