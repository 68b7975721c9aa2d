import { FileAccessError } from './errors';
import { type ByteSource, byteSourceOf } from './byte-source';
import { type HubOptions, isHubRepoId } from './hub-options';

/**
 * Where a model's or adapter's files come from: a directory path or a Hugging Face Hub repo id (Node), or
 * the files themselves, by name, as bytes, strings, Blobs/Files (a browser file input) or a Map of those.
 */
export type ModelFiles = string | Map<string, FileContent> | Record<string, FileContent> | File[];
export type FileContent = Uint8Array | ArrayBuffer | string | Blob;

/** Reads named files from a {@link ModelFiles}. */
export interface FileSource {
  /** A label for error messages (the directory, or `<memory>`). */
  label: string;
  has(name: string): Promise<boolean>;
  bytes(name: string): Promise<Uint8Array>;
  text(name: string): Promise<string>;
  list(): Promise<string[]>;
  /**
   * Random access to one file, so that a large checkpoint is read a tensor at a time (a file handle
   * for files on disk, slices for Blobs). The caller closes it. Sources made by {@link openFiles} have it.
   */
  open?(name: string): Promise<ByteSource>;
}

async function toBytes(c: FileContent): Promise<Uint8Array> {
  if (c instanceof Uint8Array) return c;
  if (c instanceof ArrayBuffer) return new Uint8Array(c);
  if (typeof c === 'string') return new TextEncoder().encode(c);
  return new Uint8Array(await c.arrayBuffer());
}

/**
 * Opens a {@link ModelFiles} for reading. A string is a directory (Node) or, when no such directory
 * exists, a Hugging Face Hub repo id resolved from the local Hub cache and downloaded into it
 * (`@lora/tensor/hub`, Node only; `options` say how).
 *
 * @example
 * ```ts
 * const files = await openFiles('HuggingFaceTB/SmolLM-135M', { localFilesOnly: true });
 * const config = JSON.parse(await files.text('config.json'));
 * ```
 *
 * `options.what` names the directory in errors (`'model directory'`, `'adapter directory'`); file-system
 * errors become a {@link FileAccessError} naming the file.
 */
export async function openFiles(files: ModelFiles, options: HubOptions & { what?: string } = {}): Promise<FileSource> {
  const what = options.what ?? 'directory';
  if (typeof files === 'string') {
    // A variable specifier keeps browser bundlers from pulling node:fs in.
    const fsName = 'node:fs/promises';
    const pathName = 'node:path';
    const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
    const path = (await import(/* @vite-ignore */ pathName)) as typeof import('node:path');
    const dir = files;
    const stat = await fs.stat(dir).catch(() => null);
    if (!stat && isHubRepoId(dir)) {
      // the Hub's cache and client are Node-only: loaded when a repo id is given, never bundled for browsers
      const hubName = '@lora/tensor/hub';
      const hub = (await import(/* @vite-ignore */ hubName)) as typeof import('./hub');
      return hub.openHubRepo(dir, options);
    }
    if (!stat?.isDirectory())
      throw new FileAccessError(
        dir,
        `${what} ${stat ? 'is a file, not a directory' : 'does not exist'} (give the path of the ${what}, or a Hugging Face Hub repo id: namespace/name)`,
        stat ? 'ENOTDIR' : 'ENOENT',
      );
    const read = async <T>(n: string, how: () => Promise<T>): Promise<T> => {
      try {
        return await how();
      } catch (e) {
        throw FileAccessError.from(path.join(dir, n), e);
      }
    };
    return {
      label: dir,
      has: async (n) => (await fs.stat(path.join(dir, n)).catch(() => null))?.isFile() ?? false,
      bytes: (n) => read(n, async () => new Uint8Array(await fs.readFile(path.join(dir, n)))),
      text: (n) => read(n, () => fs.readFile(path.join(dir, n), 'utf8')),
      list: () => read('', () => fs.readdir(dir)),
      open: (n) => openFileBytes(path.join(dir, n)),
    };
  }
  const map = new Map<string, FileContent>();
  if (Array.isArray(files)) for (const f of files) map.set(f.name, f);
  else if (files instanceof Map) for (const [k, v] of files) map.set(k, v);
  else for (const [k, v] of Object.entries(files)) map.set(k, v);
  const get = (n: string) => {
    const c = map.get(n);
    if (c === undefined)
      throw new FileAccessError(
        `<memory>/${n}`,
        `no file named '${n}' among the files given (${[...map.keys()].join(', ') || 'none'})`,
        'ENOENT',
      );
    return c;
  };
  return {
    label: '<memory>',
    has: async (n) => map.has(n),
    bytes: async (n) => toBytes(get(n)),
    text: async (n) => {
      const c = get(n);
      return typeof c === 'string' ? c : new TextDecoder().decode(await toBytes(c));
    },
    list: async () => [...map.keys()],
    open: async (n) => {
      const c = get(n);
      return byteSourceOf(typeof c === 'string' ? new TextEncoder().encode(c) : c, `<memory>/${n}`);
    },
  };
}

/** A {@link ByteSource} over a file on disk, read with a file handle (Node). */
export async function openFileBytes(file: string): Promise<ByteSource> {
  const fsName = 'node:fs/promises';
  const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
  const handle = await fs.open(file, 'r');
  const { size } = await handle.stat();
  return {
    label: file,
    size,
    read: async (begin, end) => {
      if (!(Number.isInteger(begin) && Number.isInteger(end) && begin >= 0 && begin <= end && end <= size))
        throw new RangeError(`${file}: cannot read bytes [${begin}, ${end}) of a ${size}-byte file`);
      const out = new Uint8Array(end - begin);
      for (let at = 0; at < out.length; ) {
        const { bytesRead } = await handle.read(out, at, out.length - at, begin + at);
        if (bytesRead === 0)
          throw new Error(`${file}: the file ended at byte ${begin + at} (changed while being read?)`);
        at += bytesRead;
      }
      return out;
    },
    close: () => handle.close(),
  };
}
