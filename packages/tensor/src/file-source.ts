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
    // File names come from untrusted files (a sharded checkpoint's index): each must stay inside the
    // directory, also through links (a Hub cache snapshot's links into its blobs folder are fine).
    const realDir = await fs.realpath(dir);
    const blobs = await hubBlobsDir(fs, path, realDir);
    const inside = async (n: string): Promise<string> => {
      const file = path.join(dir, n);
      if (n === '' || path.isAbsolute(n) || path.normalize(n).split(/[\\/]/).includes('..'))
        throw new FileAccessError(file, `'${n}' is not a file name inside the ${what} ${dir}`, 'EACCES');
      const real = await read(n, () => fs.realpath(file));
      if (!insideDir(path, real, realDir) && !insideDir(path, real, blobs))
        throw new FileAccessError(
          file,
          `is a link to ${real}, outside the ${what} ${realDir}: copy the file in instead`,
          'EACCES',
        );
      return file;
    };
    return {
      label: dir,
      has: async (n) => (await fs.stat(path.join(dir, n)).catch(() => null))?.isFile() ?? false,
      bytes: async (n) => {
        const file = await inside(n);
        return read(n, async () => new Uint8Array(await fs.readFile(file)));
      },
      text: async (n) => {
        const file = await inside(n);
        return read(n, () => fs.readFile(file, 'utf8'));
      },
      list: () => read('', () => fs.readdir(dir)),
      open: async (n) => {
        const file = await inside(n);
        return read(n, () => openFileBytes(file));
      },
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

type PathModule = Pick<typeof import('node:path'), 'relative' | 'isAbsolute' | 'sep' | 'dirname' | 'basename' | 'join'>;

/** True when `file` lies inside `dir` (both real paths); false for `dir` null. Node's `path` is passed in, so that this module stays browser-safe. */
export function insideDir(path: PathModule, file: string, dir: string | null): boolean {
  if (dir === null) return false;
  const rel = path.relative(dir, file);
  return rel !== '' && !rel.startsWith(`..${path.sep}`) && rel !== '..' && !path.isAbsolute(rel);
}

/**
 * The `blobs` folder of a Hugging Face cache entry when `dir` (a real path) is one of its snapshots
 * (`models--org--name/snapshots/<rev>`), whose files are links into `models--org--name/blobs`; else null.
 */
export async function hubBlobsDir(
  fs: Pick<typeof import('node:fs/promises'), 'realpath'>,
  path: PathModule,
  dir: string,
): Promise<string | null> {
  const snapshots = path.dirname(dir);
  if (path.basename(snapshots) !== 'snapshots') return null;
  return fs.realpath(path.join(path.dirname(snapshots), 'blobs')).catch(() => null);
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
