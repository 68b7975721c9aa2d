/**
 * File-system helpers for Node: load (single or sharded) and save safetensors, atomically.
 * Import from `@lora/tensor/node`; the main entry stays browser-safe.
 */
import { type FileHandle, open, readFile, readdir, realpath, stat, writeFile } from 'node:fs/promises';
import * as pathModule from 'node:path';
import { basename, dirname, isAbsolute, join, normalize } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { FileAccessError, SafetensorsError } from './errors';
import { hubBlobsDir, insideDir } from './file-source';
import { OutputError, withTemporaryFile } from './output-writer';

export { openFileBytes } from './file-source';
import { type SafetensorsEntry, type SafetensorsHeader, parseHeader, readHeaderLength } from './safetensors-format';
import { type DecodedTensor, type ParsedSafetensors, decodeEntry, parseSafetensors } from './safetensors-reader';
import {
  type RawTensor,
  type SerializeOptions,
  type WritableDtype,
  encodeValues,
  serializeSafetensors,
} from './safetensors-writer';

/** What {@link loadSafetensors} returns. The caller owns (and disposes) the tensors. */
export interface LoadedSafetensors extends ParsedSafetensors {
  /** The files read, in order (one, or every shard of a sharded checkpoint). */
  files: string[];
  /** The `metadata` object of a sharded checkpoint's index (e.g. `total_size`), if there was an index. */
  indexMetadata?: Record<string, unknown>;
}

export {
  OutputError,
  outputKinds,
  prepareOutput,
  removeStaleTemporaries,
  temporaryPathFor,
  writeOutput,
} from './output-writer';
export type {
  OutputErrorCode,
  OutputInput,
  OutputKind,
  OutputOptions,
  PreparedOutput,
} from './output-writer';

/**
 * Writes bytes to `path` atomically: a temporary file beside it, then a rename. On failure, SIGINT or
 * SIGTERM the temporary file is removed and any existing file at `path` is left as it was; temporaries
 * that killed runs left beside `path` are removed first. (For a command's output, with its checks, use
 * {@link writeOutput}.)
 *
 * @example
 * ```ts
 * await writeFileAtomic('out/adapter_config.json', new TextEncoder().encode(json));
 * ```
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array | string): Promise<void> {
  try {
    await withTemporaryFile(path, (tmp) => writeFile(tmp, bytes, { flag: 'wx' }));
  } catch (e) {
    // the error names the file asked for, not the hidden temporary one
    throw e instanceof OutputError ? e : FileAccessError.from(path, e);
  }
}

/** Reads a whole file; file-system errors (missing, a directory, permissions) become a {@link FileAccessError} naming it. */
async function readWhole(path: string, what = 'file'): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw FileAccessError.from(path, e, what);
  }
}

async function readSingle(path: string, what = 'file'): Promise<ParsedSafetensors> {
  const bytes = await readWhole(path, what);
  return parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), { file: path });
}

function indexError(file: string, message: string): never {
  throw new SafetensorsError({ file, field: 'weight_map' }, message);
}

async function readSharded(indexPath: string): Promise<LoadedSafetensors> {
  const text = (await readWhole(indexPath, 'index')).toString('utf8');
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(
      { file: indexPath, field: 'header' },
      `index is not valid JSON (${(e as Error).message})`,
    );
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    indexError(indexPath, 'index has no "weight_map" object mapping tensor names to shard files');
  }
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard.length === 0)
      indexError(indexPath, `shard for '${name}' is ${JSON.stringify(shard)}, not a file name`);
    // An index is untrusted input: its shard names must stay inside the checkpoint's directory.
    if (isAbsolute(shard) || normalize(shard).split(/[\\/]/).includes('..')) {
      indexError(indexPath, `shard '${shard}' for '${name}' points outside the checkpoint directory`);
    }
    const names = byShard.get(shard);
    if (names) names.push(name);
    else byShard.set(shard, [name]);
  }
  const dir = dirname(indexPath);
  const realDir = await realpath(dir);
  const tensors: Record<string, tf.Tensor> = Object.create(null);
  const files: string[] = [];
  let metadata: Record<string, string> = {};
  try {
    for (const [shard, names] of byShard) {
      const file = join(dir, shard);
      // a shard may be a link (Hugging Face's cache links every file to a blob), but not to a file outside
      // the checkpoint's directory tree: an index is untrusted and must not make us read /etc/… or ~/.ssh/…
      const real = await realpath(file).catch((e: unknown) => {
        throw FileAccessError.from(file, e, `shard (listed in ${basename(indexPath)})`);
      });
      if (
        !insideDir(pathModule, real, realDir) &&
        !insideDir(pathModule, real, await hubBlobsDir({ realpath }, pathModule, realDir))
      )
        indexError(
          indexPath,
          `shard '${shard}' is a link to ${real}, outside the checkpoint directory ${realDir}; copy the file in instead`,
        );
      const part = await readSingle(file, `shard (listed in ${basename(indexPath)})`);
      files.push(file);
      if (files.length === 1) metadata = part.metadata;
      for (const name of names) {
        const t = part.tensors[name];
        if (t === undefined) {
          tf.dispose(Object.values(part.tensors));
          throw new SafetensorsError(
            { file, tensor: name, field: 'weight_map' },
            `the index ${indexPath} puts '${name}' in this shard, which does not contain it`,
          );
        }
        tensors[name] = t;
      }
      // Tensors a shard holds beyond what the index lists are not part of the checkpoint.
      for (const [name, t] of Object.entries(part.tensors)) if (tensors[name] !== t) t.dispose();
    }
  } catch (e) {
    tf.dispose(Object.values(tensors));
    throw e;
  }
  const indexMetadata = (index as { metadata?: unknown }).metadata;
  return {
    tensors,
    metadata,
    files,
    ...(typeof indexMetadata === 'object' && indexMetadata !== null
      ? { indexMetadata: indexMetadata as Record<string, unknown> }
      : {}),
  };
}

/**
 * Loads a safetensors checkpoint: a `.safetensors` file, a sharded checkpoint's
 * `*.safetensors.index.json`, or a directory holding either (`model.safetensors.index.json`,
 * then `model.safetensors`, then a single `*.safetensors` file).
 *
 * @example
 * ```ts
 * import { loadSafetensors } from '@lora/tensor/node';
 * const { tensors, metadata } = await loadSafetensors('SmolLM-135M/');
 * ```
 */
export async function loadSafetensors(path: string): Promise<LoadedSafetensors> {
  const info = await stat(path).catch((e: unknown) => {
    throw FileAccessError.from(path, e, 'checkpoint');
  });
  if (info.isDirectory()) {
    const entries = await readdir(path);
    if (entries.includes('model.safetensors.index.json'))
      return readSharded(join(path, 'model.safetensors.index.json'));
    if (entries.includes('model.safetensors')) return loadSafetensors(join(path, 'model.safetensors'));
    const indexes = entries.filter((e) => e.endsWith('.safetensors.index.json'));
    if (indexes.length === 1) return readSharded(join(path, indexes[0] as string));
    const singles = entries.filter((e) => e.endsWith('.safetensors'));
    if (singles.length === 1 && indexes.length === 0) return loadSafetensors(join(path, singles[0] as string));
    throw new SafetensorsError(
      { file: path, field: 'name' },
      `directory holds ${singles.length} .safetensors files and ${indexes.length} indexes; pass the file or the *.safetensors.index.json to load`,
    );
  }
  if (path.endsWith('.index.json')) return readSharded(path);
  const single = await readSingle(path);
  return { ...single, files: [path] };
}

/**
 * Saves tensors as a safetensors file, atomically (a temporary file, then a rename).
 *
 * @example
 * ```ts
 * import { saveSafetensors } from '@lora/tensor/node';
 * await saveSafetensors('adapter_model.safetensors', tensors, { metadata: { format: 'pt' } });
 * ```
 */
export async function saveSafetensors(
  path: string,
  tensors: Record<string, tf.Tensor | RawTensor>,
  options: SerializeOptions = {},
): Promise<void> {
  const bytes = await serializeSafetensors(tensors, options);
  await writeFileAtomic(path, bytes);
}

/**
 * Reads and validates a safetensors file's header without reading its data (the 8-byte length and the
 * JSON header only): names, dtypes, shapes, offsets and metadata of a file of any size.
 *
 * @example
 * ```ts
 * import { readSafetensorsFileHeader } from '@lora/tensor/node';
 * const { entries } = await readSafetensorsFileHeader('model-00001-of-00004.safetensors');
 * ```
 */
export async function readSafetensorsFileHeader(path: string): Promise<SafetensorsHeader> {
  const file = await openForReading(path);
  try {
    return (await readOpenHeader(file, path)).header;
  } finally {
    await file.close();
  }
}

async function openForReading(path: string): Promise<FileHandle> {
  try {
    const file = await open(path, 'r');
    if ((await file.stat()).isDirectory()) {
      await file.close();
      throw new FileAccessError(path, 'file is a directory, not a file', 'EISDIR');
    }
    return file;
  } catch (e) {
    throw FileAccessError.from(path, e);
  }
}

/** Reads and validates the header of an open file: the header, its raw bytes with the 8-byte prefix, and the file's size. */
async function readOpenHeader(
  file: FileHandle,
  path: string,
): Promise<{ header: SafetensorsHeader; head: Uint8Array; size: number }> {
  const { size } = await file.stat();
  const prefix = new Uint8Array(8);
  await file.read(prefix, 0, 8, 0);
  const head = new Uint8Array(8 + readHeaderLength(prefix, size, path));
  await file.read(head, 0, head.length, 0);
  return { header: parseHeader(head.subarray(8), size, path), head, size };
}

/** The input file of {@link rewriteSafetensors}, as its replace function sees it. */
export interface SafetensorsFileReader {
  /** The input's path. */
  path: string;
  /** The validated header (entries in data order). */
  header: SafetensorsHeader;
  /** Reads and decodes one tensor of the file (half and 64-bit types widen or narrow as `decodeEntry` does). */
  read(name: string): Promise<DecodedTensor>;
}

/** What {@link rewriteSafetensors} returns. */
export interface RewriteResult {
  /** Names of the tensors whose data was replaced. */
  replaced: string[];
  /** Bytes written. */
  bytes: number;
}

const REWRITABLE: readonly string[] = ['F32', 'F16', 'BF16', 'F64', 'I32', 'I64'];
/** Bytes copied per read/write when a tensor is passed through unchanged. */
const COPY_CHUNK = 4 * 2 ** 20;

/**
 * Copies a safetensors file tensor by tensor, replacing the data of the tensors `replace` returns new
 * values for, with memory near one tensor: the header is kept byte for byte (names, dtypes, shapes,
 * offsets and metadata do not change), untouched tensors are copied as bytes, replaced ones are encoded
 * back into their own dtype (a bf16 checkpoint stays bf16). The output is written atomically; on any
 * error nothing is left at `output`. Replacements for F32, F16, BF16, F64, I32 and I64 tensors only.
 *
 * @example
 * ```ts
 * import { rewriteSafetensors } from '@lora/tensor/node';
 * // halve every weight of one layer, keeping the rest of a checkpoint untouched
 * await rewriteSafetensors('model.safetensors', 'out.safetensors', async (name, file) =>
 *   name === 'lm_head.weight' ? (await file.read(name)).values.map((v) => v / 2) : undefined);
 * ```
 */
export async function rewriteSafetensors(
  input: string,
  output: string,
  replace: (name: string, file: SafetensorsFileReader) => Promise<DecodedTensor['values'] | undefined>,
  options: { onProgress?: (bytesDone: number, bytesTotal: number) => void } = {},
): Promise<RewriteResult> {
  const source = await openForReading(input);
  let target: FileHandle | null = null;
  try {
    const { header, head, size } = await readOpenHeader(source, input);
    const byName = new Map<string, SafetensorsEntry>(header.entries.map((e) => [e.name, e]));
    const readBytes = async (entry: SafetensorsEntry): Promise<Uint8Array> => {
      const buf = new Uint8Array(entry.end - entry.begin);
      if (buf.length) await source.read(buf, 0, buf.length, entry.begin);
      return buf;
    };
    const file: SafetensorsFileReader = {
      path: input,
      header,
      async read(name) {
        const entry = byName.get(name);
        if (!entry)
          throw new SafetensorsError({ file: input, tensor: name, field: 'name' }, `no tensor '${name}' in this file`);
        return decodeEntry(await readBytes(entry), { ...entry, begin: 0, end: entry.end - entry.begin }, input);
      },
    };
    const replaced: string[] = [];
    let written = 0;
    await withTemporaryFile(output, async (tmp) => {
      target = await open(tmp, 'wx').catch((e: unknown) => {
        throw FileAccessError.from(output, e);
      });
      await target.write(head, 0, head.length, 0);
      written = head.length;
      // untouched tensors are copied through one reused buffer, so that copying allocates nothing per tensor
      const chunk = new Uint8Array(Math.min(COPY_CHUNK, Math.max(1, size)));
      for (const entry of header.entries) {
        const values = await replace(entry.name, file);
        if (values === undefined) {
          for (let at = entry.begin; at < entry.end; ) {
            const n = Math.min(chunk.length, entry.end - at);
            const { bytesRead } = await source.read(chunk, 0, n, at);
            if (bytesRead !== n)
              throw new SafetensorsError(
                { file: input, tensor: entry.name, field: 'data' },
                `the file ended while reading it (changed while being read?)`,
              );
            await target.write(chunk, 0, n, written);
            written += n;
            at += n;
          }
          options.onProgress?.(written, size);
          continue;
        }
        const numel = entry.shape.reduce((a, b) => a * b, 1);
        if (values.length !== numel) {
          throw new SafetensorsError(
            { file: output, tensor: entry.name, field: 'shape' },
            `the replacement has ${values.length} values; the tensor's shape [${entry.shape.join(', ')}] holds ${numel}`,
          );
        }
        if (!REWRITABLE.includes(entry.dtype)) {
          throw new SafetensorsError(
            { file: output, tensor: entry.name, field: 'dtype' },
            `a ${entry.dtype} tensor cannot be rewritten; only ${REWRITABLE.join(', ')} can`,
          );
        }
        // floats into float dtypes, integers into integer ones, whatever typed array the caller returned
        const isFloat = entry.dtype.startsWith('F') || entry.dtype === 'BF16';
        const typed = isFloat
          ? values instanceof Float32Array
            ? values
            : Float32Array.from(values)
          : values instanceof Int32Array
            ? values
            : Int32Array.from(values);
        const bytes =
          entry.dtype === 'F64'
            ? new Uint8Array(Float64Array.from(typed).buffer)
            : encodeValues(typed, entry.dtype as WritableDtype);
        replaced.push(entry.name);
        await target.write(bytes, 0, bytes.length, written);
        written += bytes.length;
        options.onProgress?.(written, size);
      }
      await target.close();
      target = null;
    });
    return { replaced, bytes: written };
  } finally {
    await (target as FileHandle | null)?.close().catch(() => undefined);
    await source.close();
  }
}
