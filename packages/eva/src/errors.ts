/** Why an EVA call refused to run (see {@link EvaError}). */
export type EvaErrorCode =
  /** The dataloader yielded no batch. */
  | 'empty-dataloader'
  /** A batch is not an object with an `inputIds` tensor (what the default functions need). */
  | 'bad-batch'
  /** No target layer received an input during the first forward pass, or some did not. */
  | 'no-layer-inputs'
  /** A `prepareLayerInputsFn` returned something other than a 2-D tensor, or a mapping names unknown modules. */
  | 'bad-layer-inputs'
  /** The model has no layer EVA can initialise (no Linear target). */
  | 'no-targets'
  /** `initializeLoraEvaWeights` was given something that is not a PeftModel, or an unusable adapter. */
  | 'bad-model'
  /** Neither a dataloader nor an EVA state dict was given. */
  | 'no-data'
  /** An EVA state dict entry does not fit its layer. */
  | 'bad-state-dict';

/**
 * A mistake in what was passed to `getEvaStateDict` or `initializeLoraEvaWeights`: worded as PEFT words
 * it where PEFT has a message, naming the value and what to do instead. When it is thrown, the model is
 * as it was before the call (hooks removed, adapters and train/eval mode restored, no layer changed).
 *
 * @example
 * ```ts
 * try { await initializeLoraEvaWeights(peft, []); } catch (e) {
 *   if (e instanceof EvaError && e.code === 'empty-dataloader') console.error(e.message); // 'dataloader is empty; …'
 * }
 * ```
 */
export class EvaError extends Error {
  override readonly name = 'EvaError';
  readonly code: EvaErrorCode;

  constructor(code: EvaErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}
