import type { ByteSource } from './byte-source';
import { type SafetensorsEntry, type SafetensorsHeader, parseHeader, readHeaderLength } from './safetensors-format';
import { type DecodedTensor, decodeEntry } from './safetensors-reader';

/**
 * Reads and validates a safetensors header from a {@link ByteSource}: the 8-byte length and the JSON
 * header only, whatever the file's size.
 *
 * @example
 * ```ts
 * const { entries } = await readSafetensorsHeaderFrom(byteSourceOf(blob));
 * ```
 */
export async function readSafetensorsHeaderFrom(source: ByteSource): Promise<SafetensorsHeader> {
  const prefix = await source.read(0, Math.min(8, source.size));
  const n = readHeaderLength(prefix, source.size, source.label);
  return parseHeader(await source.read(8, 8 + n), source.size, source.label);
}

/** One tensor of a file, as {@link streamSafetensors} yields it. */
export interface StreamedTensor {
  entry: SafetensorsEntry;
  /** The values, widened or narrowed as `decodeEntry` does (BF16 / F16 / F64 become float32). */
  tensor: DecodedTensor;
}

/**
 * Decodes the tensors of a safetensors file one at a time, in file order, reading only that tensor's
 * bytes: memory stays near the largest tensor (as float32), not the file. Pass `names` to read a
 * subset. The header is validated first, so a malformed file fails before any tensor is yielded.
 *
 * @example
 * ```ts
 * for await (const { entry, tensor } of streamSafetensors(source)) {
 *   const t = tf.tensor(tensor.values, tensor.shape, tensor.dtype);
 *   model.getVariable(entry.name).assign(t);
 *   t.dispose();
 * }
 * ```
 */
export async function* streamSafetensors(
  source: ByteSource,
  options: { header?: SafetensorsHeader; names?: ReadonlySet<string> } = {},
): AsyncGenerator<StreamedTensor> {
  const header = options.header ?? (await readSafetensorsHeaderFrom(source));
  for (const entry of header.entries) {
    if (options.names && !options.names.has(entry.name)) continue;
    const bytes = await source.read(entry.begin, entry.end);
    yield { entry, tensor: decodeEntry(bytes, { ...entry, begin: 0, end: bytes.length }, source.label) };
  }
}
