/** A configuration error, worded as PEFT words it. */
export class LoraConfigError extends Error {
  override readonly name = 'LoraConfigError';
}
