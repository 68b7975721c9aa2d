/**
 * What `@lora/loftq` raises for input it cannot use: a weight that is not 2-D or not finite, bits or a
 * block size it has no quantizer for, a rank the weight cannot take. Config mistakes inside a
 * `LoraConfig` (`loftqConfig`) are `LoraConfigError`s of `@lora/core`, as for every method.
 *
 * @example
 * ```ts
 * try { nfQuantize(w, { bits: 5 }); } catch (e) {
 *   if (e instanceof QuantizationError) console.error(e.option, e.message); // 'bits', 'nfQuantize: bits is 5 …'
 * }
 * ```
 */
export class QuantizationError extends Error {
  override readonly name = 'QuantizationError';
  /** The option or argument at fault (`bits`, `blockSize`, `reducedRank`, `weight`…). */
  readonly option: string;

  constructor(option: string, message: string) {
    super(message);
    this.option = option;
  }
}
