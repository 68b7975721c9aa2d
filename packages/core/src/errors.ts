/**
 * Errors raised by `@lora/core` for what a user wrote: a config, an adapter's files.
 */

/** Where a configuration problem sits: the PEFT field (snake_case, as in `adapter_config.json`) and the file, when read from one. */
export interface LoraConfigErrorDetail {
  /** The field at fault, as PEFT names it (`lora_alpha`, `rank_pattern`), or the TypeScript option (`loraAlpha`) when given in code. */
  field?: string;
  /** The file the config was read from. */
  file?: string;
}

/**
 * A configuration error: a value of the wrong type or out of range, an unknown option, a regular
 * expression that cannot be used. Worded as PEFT words it where PEFT has a message; the message names
 * the field, the value and what to set instead.
 *
 * @example
 * ```ts
 * try { loraConfig({ r: 0 }); } catch (e) {
 *   if (e instanceof LoraConfigError) console.error(e.field, e.message); // 'r', '`r` should be a positive integer …'
 * }
 * ```
 */
export class LoraConfigError extends Error {
  override readonly name = 'LoraConfigError';
  readonly field: string | undefined;
  readonly file: string | undefined;

  constructor(message: string, detail: LoraConfigErrorDetail = {}) {
    super(detail.file === undefined ? message : `${detail.file}: ${message}`);
    this.field = detail.field;
    this.file = detail.file;
  }
}

/**
 * An adapter's files are missing, unreadable or do not fit the model: names the file and what to do.
 *
 * @example
 * ```ts
 * try { await loadAdapter(model, 'adapters/sql'); } catch (e) {
 *   if (e instanceof AdapterFileError) console.error(e.file, e.message);
 * }
 * ```
 */
export class AdapterFileError extends Error {
  override readonly name = 'AdapterFileError';
  readonly file: string;

  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.file = file;
  }
}

/** Levenshtein distance, for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(
        (prev[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    prev = row;
  }
  return prev[b.length] as number;
}
