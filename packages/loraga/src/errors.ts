/** What part of a LoRA-GA gradient cache did not match the model (see {@link LoraGaCacheError}). */
export type LoraGaCacheField = 'file' | 'format' | 'targets' | 'shape' | 'dtype' | 'weights';

/**
 * A LoRA-GA gradient cache that cannot be used for this model: not a cache file, or made for other
 * targets, other shapes or other base weights. `file` is the cache's path and `field` what differs.
 * Nothing was attached when it is thrown; delete the file (or pass another `cacheFile`) to estimate again.
 *
 * @example
 * ```ts
 * try { await preprocessLoraga(model, config, trainStep, { cacheFile }); } catch (e) {
 *   if (e instanceof LoraGaCacheError && e.field === 'weights') console.log('the cache is for another checkpoint');
 * }
 * ```
 */
export class LoraGaCacheError extends Error {
  override readonly name = 'LoraGaCacheError';
  readonly file: string;
  readonly field: LoraGaCacheField;

  constructor(file: string, field: LoraGaCacheField, message: string) {
    super(`LoRA-GA gradient cache ${file}: ${message}`);
    this.file = file;
    this.field = field;
  }
}
