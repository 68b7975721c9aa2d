/**
 * Random access to the bytes of one file, so that a checkpoint larger than memory can be read a
 * tensor at a time: a file handle in Node, a `Blob.slice` in browsers, a view of bytes already held.
 */
export interface ByteSource {
  /** A name for error messages (the file's path, or `<memory>/name`). */
  label: string;
  /** The file's size in bytes. */
  size: number;
  /** Bytes [begin, end) in a fresh buffer of their own (so typed-array views of it are aligned). */
  read(begin: number, end: number): Promise<Uint8Array>;
  /** Releases the file; a no-op for bytes in memory. */
  close(): Promise<void>;
}

function checkRange(label: string, size: number, begin: number, end: number): void {
  if (!(Number.isInteger(begin) && Number.isInteger(end) && begin >= 0 && begin <= end && end <= size))
    throw new RangeError(`${label}: cannot read bytes [${begin}, ${end}) of a ${size}-byte file`);
}

/**
 * A {@link ByteSource} over bytes already in memory (an `ArrayBuffer` or `Uint8Array`) or a `Blob` /
 * browser `File`, which is read slice by slice and never whole.
 *
 * @example
 * ```ts
 * const source = byteSourceOf(fileInput.files[0]);
 * const header = await readSafetensorsHeaderFrom(source);
 * ```
 */
export function byteSourceOf(content: Uint8Array | ArrayBuffer | Blob, label = '<memory>'): ByteSource {
  if (typeof Blob !== 'undefined' && content instanceof Blob) {
    return {
      label,
      size: content.size,
      read: async (begin, end) => {
        checkRange(label, content.size, begin, end);
        return new Uint8Array(await content.slice(begin, end).arrayBuffer());
      },
      close: async () => undefined,
    };
  }
  const bytes = content instanceof Uint8Array ? content : new Uint8Array(content as ArrayBuffer);
  return {
    label,
    size: bytes.length,
    read: async (begin, end) => {
      checkRange(label, bytes.length, begin, end);
      return bytes.slice(begin, end);
    },
    close: async () => undefined,
  };
}
