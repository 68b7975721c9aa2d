/**
 * The error measure DESIGN.md uses for parity: `max|actual − expected| / max|expected|`
 * (the absolute error when `expected` is all zeros).
 *
 * @example
 * ```ts
 * expect(maxRelativeError(await ours.data(), peft)).toBeLessThan(1e-5);
 * ```
 */
export function maxRelativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length)
    throw new Error(`length ${actual.length} differs from expected ${expected.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    if (Number.isNaN(a) !== Number.isNaN(e)) return Number.POSITIVE_INFINITY;
    if (!Number.isNaN(e)) diff = Math.max(diff, Math.abs(a - e));
    scale = Math.max(scale, Math.abs(e));
  }
  return scale === 0 ? diff : diff / scale;
}
