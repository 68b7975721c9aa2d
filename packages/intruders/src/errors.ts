/**
 * Intruder-dimension reduction cannot run as asked: an option out of range, an adapter that does not
 * exist (or a new name that does), a layer it cannot handle (merged, grouped convolution), or adapter
 * files that do not fit the base weights. Thrown before anything is changed; the message names the
 * value and what to do.
 *
 * @example
 * ```ts
 * try { await reduceIntruderDimension(peft, { topK: 0 }); } catch (e) {
 *   if (e instanceof IntruderReductionError) console.error(e.message); // "topK 0 is not a positive integer…"
 * }
 * ```
 */
export class IntruderReductionError extends Error {
  override readonly name = 'IntruderReductionError';
}
