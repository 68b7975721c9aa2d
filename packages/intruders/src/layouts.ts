import { type Matrix64, matrix64, transpose64 } from '@lora/linalg';
import { IntruderReductionError } from './errors';

/**
 * How one layer's factors relate to its base weight seen as a matrix M (m×n, the stored layout, as
 * PEFT reads `base_layer.weight` and `get_delta_weight`):
 *
 * - `'direct'`: ΔM = s·B·A — a Linear ([out, in]); a convolution with its kernel flattened
 *   (M = W as [out, in·∏kernel], B as [out, r], A as [r, in·∏kernel]).
 * - `'transposed'`: ΔM = s·(B·A)ᵀ = s·Aᵀ·Bᵀ — an Embedding (W [vocab, dim], A [r, vocab], B [dim, r])
 *   and a fan_in_fan_out Linear (transformers' Conv1D: W [in, out]).
 *
 * In both, ΔM = s·L·R with L (m×r) and R (r×n); the new factors are read back from L′ and R′ the same
 * way. PEFT 0.21 writes L′ into B and R′ into A whatever the layout, which for the transposed kinds
 * gives B [vocab, r] and A [r, dim] (a forward that fails unless the weight is square, and the
 * transposed update when it is); here they go where they belong.
 */
export interface FactorLayout {
  orientation: 'direct' | 'transposed';
  m: number;
  n: number;
  r: number;
  aShape: number[];
  bShape: number[];
}

const shapeOf = (s: readonly number[]) => `[${s.join(', ')}]`;

/**
 * The layout of one layer's factors, checked against the weight: `kind` as `@lora/core` names layer
 * kinds (`'conv'` for any convolution), `fanInFanOut` for a Linear stored [in, out].
 */
export function factorLayout(
  where: string,
  kind: 'linear' | 'embedding' | 'conv',
  fanInFanOut: boolean,
  weight: readonly number[],
  a: readonly number[],
  b: readonly number[],
): FactorLayout {
  const r = a[0] as number;
  const bad = (why: string): never => {
    throw new IntruderReductionError(
      `${where}: ${why} (weight ${shapeOf(weight)}, lora_A ${shapeOf(a)}, lora_B ${shapeOf(b)}); was the adapter trained on this base model?`,
    );
  };
  // a grouped convolution's lora_B has r / groups columns, so it is told apart before the rank check
  if (kind === 'conv' && a[1] !== weight[1])
    throw new IntruderReductionError(
      `${where} is a grouped convolution (lora_A reads ${a[1]} channels, the kernel ${weight[1]} per group): its update is not one matrix, so intruder reduction does not apply; leave it out of target_modules`,
    );
  if (b[1] !== r) bad(`lora_B has rank ${b[1]} but lora_A has rank ${r}`);
  if (kind === 'conv') {
    const kernel = weight.slice(2);
    if (b[0] !== weight[0] || shapeOf(a.slice(2)) !== shapeOf(kernel) || b.slice(2).some((x) => x !== 1))
      bad('the factors do not make an update of the kernel’s shape');
    const n = weight.slice(1).reduce((x, y) => x * y, 1);
    return { orientation: 'direct', m: weight[0] as number, n, r, aShape: [...a], bShape: [...b] };
  }
  if (weight.length !== 2 || a.length !== 2 || b.length !== 2) bad('expected 2-d weights and factors');
  const [w0, w1] = weight as [number, number];
  if (kind === 'embedding' || fanInFanOut) {
    // stored [vocab, dim] (embedding) or [in, out] (fan_in_fan_out); A reads the rows, B writes the columns
    if (a[1] !== w0 || b[0] !== w1) bad('the factors do not make an update of the weight’s shape');
    return { orientation: 'transposed', m: w0, n: w1, r, aShape: [...a], bShape: [...b] };
  }
  if (b[0] !== w0 || a[1] !== w1) bad('the factors do not make an update of the weight’s shape');
  return { orientation: 'direct', m: w0, n: w1, r, aShape: [...a], bShape: [...b] };
}

/** L (m×r) and R (r×n) with ΔM = s·L·R, from A's and B's values (row-major, as tensors hold them). */
export function factorsToMatrices(
  layout: FactorLayout,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
): { left: Matrix64; right: Matrix64 } {
  const { m, n, r } = layout;
  if (layout.orientation === 'direct') return { left: matrix64(m, r, b), right: matrix64(r, n, a) };
  return { left: transpose64(matrix64(r, m, a)), right: transpose64(matrix64(n, r, b)) };
}

/** A's and B's values (row-major, in their own shapes) from L′ and R′. */
export function matricesToFactors(
  layout: FactorLayout,
  left: Matrix64,
  right: Matrix64,
): { a: Float32Array; b: Float32Array } {
  if (layout.orientation === 'direct') return { a: Float32Array.from(right.data), b: Float32Array.from(left.data) };
  return { a: Float32Array.from(transpose64(left).data), b: Float32Array.from(transpose64(right).data) };
}
