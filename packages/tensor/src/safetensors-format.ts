/**
 * The safetensors header: validated against the file it came from, before any tensor data is touched.
 *
 * Layout: 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}`,
 * then the data section. Offsets are relative to the data section, must tile it exactly
 * (no gaps, no overlap), and each tensor's byte length must equal its element count times its dtype size.
 */
import { SafetensorsError, describeValue } from './errors';

/** Dtypes that may appear in a safetensors header, with their sizes in bytes. */
export const SAFETENSORS_DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;

/** A dtype name as written in safetensors headers. */
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPE_SIZES;

/** Dtypes this package can decode into tfjs tensors. */
export const READABLE_DTYPES: readonly SafetensorsDtype[] = [
  'F32',
  'F16',
  'BF16',
  'F64',
  'I64',
  'I32',
  'I16',
  'I8',
  'U8',
  'BOOL',
];

/** One tensor's entry in a validated header. Offsets are absolute within the file's bytes. */
export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the first data byte (8 + header length + data_offsets[0]). */
  begin: number;
  /** Absolute byte offset one past the last data byte. */
  end: number;
}

/** A validated header. */
export interface SafetensorsHeader {
  /** Entries in the order their data appears in the file. */
  entries: SafetensorsEntry[];
  metadata: Record<string, string>;
  /** Where the data section starts (8 + header length). */
  dataStart: number;
}

/** The safetensors reference implementation refuses headers above 100 MB; so do we. */
export const MAX_HEADER_BYTES = 100_000_000;

function fail(file: string, field: string, message: string, tensor?: string): never {
  throw new SafetensorsError(tensor === undefined ? { file, field } : { file, field, tensor }, message);
}

/**
 * Reads and validates the header length prefix. `totalBytes` is the whole file's size.
 * Returns the header length N; the header occupies bytes [8, 8 + N).
 */
export function readHeaderLength(prefix: Uint8Array, totalBytes: number, file: string): number {
  if (totalBytes < 8 || prefix.length < 8) {
    fail(
      file,
      'header_length',
      `file is ${totalBytes} bytes, shorter than the 8-byte header length prefix; the file is truncated or not safetensors`,
    );
  }
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  if (hi !== 0 || lo > MAX_HEADER_BYTES) {
    const n = BigInt(hi) * 2n ** 32n + BigInt(lo);
    fail(
      file,
      'header_length',
      `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt or not safetensors`,
    );
  }
  if (lo < 2) fail(file, 'header_length', `header length ${lo} is too small to hold a JSON object`);
  if (8 + lo > totalBytes) {
    fail(
      file,
      'header_length',
      `header length ${lo} runs past the end of the ${totalBytes}-byte file; the file is truncated`,
    );
  }
  return lo;
}

/**
 * The most tensors one file may hold: 262 144, beyond any real checkpoint shard or adapter (an all-linear
 * adapter of a 128-expert, 94-layer MoE holds about 73 000). Each tensor costs about 1 KB in tfjs however
 * small it is, so a header of a million empty tensors would cost a gigabyte and many seconds.
 */
export const MAX_TENSORS = 2 ** 18;

/** serde_json's recursion limit, which the Rust reader inherits: deeper headers are refused there too. */
export const MAX_HEADER_DEPTH = 128;

/**
 * Scans the header's JSON text once, before it is parsed, for what `JSON.parse` would let through but
 * the Rust reader refuses: names that appear twice at the top level (JSON.parse keeps the last), numbers
 * that are not integer literals (`8.0`, `8e0`: serde reads them as floats, never as a `usize`), and
 * nesting beyond {@link MAX_HEADER_DEPTH}. Linear in the header's length; no recursion.
 */
function scanHeaderText(json: string, file: string): void {
  const seen = new Set<string>();
  // per open object: the key being read (tensor name at depth 1, field at depth 2)
  const keys: (string | null)[] = [];
  const containers: number[] = [];
  let expectKey = false;
  const n = json.length;
  for (let i = 0; i < n; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (; j < n; j++) {
        const d = json.charCodeAt(j);
        if (d === 0x5c /* \ */) {
          escaped = true;
          j++;
        } else if (d === 0x22) break;
      }
      if (expectKey && containers[containers.length - 1] === 0x7b) {
        let key = json.slice(i + 1, j);
        if (escaped) {
          try {
            key = JSON.parse(json.slice(i, j + 1)) as string;
          } catch {
            fail(file, 'header', 'header is not valid JSON (a key is not a valid string)');
          }
        }
        keys[keys.length - 1] = key;
        if (containers.length === 1) {
          if (seen.has(key)) fail(file, 'name', `name '${key}' appears more than once in the header`, key);
          seen.add(key);
          if (seen.size - (seen.has('__metadata__') ? 1 : 0) > MAX_TENSORS)
            fail(file, 'header', `header lists more than ${MAX_TENSORS} tensors; no checkpoint shard holds that many`);
        }
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      containers.push(c);
      keys.push(null);
      if (containers.length > MAX_HEADER_DEPTH)
        fail(file, 'header', `header nests deeper than ${MAX_HEADER_DEPTH} levels; it is not a safetensors header`);
      expectKey = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      containers.pop();
      keys.pop();
    } else if (c === 0x2c /* , */) {
      expectKey = containers[containers.length - 1] === 0x7b;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      // a number: digits, sign, and (refused below) a fraction or an exponent
      let j = i + 1;
      let integer = true;
      for (; j < n; j++) {
        const d = json.charCodeAt(j);
        if (d === 0x2e || d === 0x65 || d === 0x45) integer = false;
        else if (!((d >= 0x30 && d <= 0x39) || d === 0x2b || d === 0x2d)) break;
      }
      if (!integer) {
        const tensor = keys[0] ?? undefined;
        fail(
          file,
          tensor === '__metadata__' ? '__metadata__' : (keys[1] ?? 'header'),
          `${json.slice(i, Math.min(j, i + 40))} is not an integer literal; safetensors headers hold integers only (the Rust reader refuses 8.0 and 8e0)`,
          tensor === '__metadata__' ? undefined : tensor,
        );
      }
      i = j - 1;
    }
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parses and validates the JSON header against a file of `totalBytes` bytes.
 * `headerBytes` are the N bytes after the length prefix.
 */
export function parseHeader(headerBytes: Uint8Array, totalBytes: number, file: string): SafetensorsHeader {
  if (headerBytes[0] === 0xef && headerBytes[1] === 0xbb && headerBytes[2] === 0xbf)
    fail(
      file,
      'header',
      'header starts with a UTF-8 byte-order mark; safetensors headers are JSON with none (the Rust reader refuses it)',
    );
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    fail(file, 'header', 'header is not valid UTF-8');
  }
  scanHeaderText(text, file);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail(file, 'header', `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(raw))
    fail(file, 'header', 'header must be a JSON object mapping tensor names to {dtype, shape, data_offsets}');

  const dataStart = 8 + headerBytes.length;
  const dataBytes = totalBytes - dataStart;
  let metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];

  for (const [name, info] of Object.entries(raw)) {
    if (name === '__metadata__') {
      if (info === null) continue;
      if (!isPlainObject(info)) fail(file, '__metadata__', 'must be an object of string values');
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string')
          fail(file, '__metadata__', `value of '${k}' is ${describeValue(v)}; metadata values must be strings`);
      }
      metadata = info as Record<string, string>;
      continue;
    }
    if (name.length === 0) fail(file, 'name', 'a tensor has an empty name');
    if (!isPlainObject(info)) fail(file, 'header', 'entry must be an object {dtype, shape, data_offsets}', name);
    const { dtype, shape, data_offsets: offsets } = info;
    if (typeof dtype !== 'string' || !(dtype in SAFETENSORS_DTYPE_SIZES)) {
      fail(
        file,
        'dtype',
        `unknown dtype ${describeValue(dtype)}; expected one of ${Object.keys(SAFETENSORS_DTYPE_SIZES).join(', ')}`,
        name,
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(file, 'shape', `shape ${describeValue(shape)} must be an array of non-negative integers`, name);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(
        file,
        'data_offsets',
        `data_offsets ${describeValue(offsets)} must be two non-negative integers [begin, end] with begin <= end`,
        name,
      );
    }
    const [b, e] = offsets as [number, number];
    if (e > dataBytes) {
      fail(
        file,
        'data_offsets',
        `data_offsets [${b}, ${e}] run past the ${dataBytes}-byte data section; the file is truncated`,
        name,
      );
    }
    const dims = shape as number[];
    let numel = 1;
    for (const d of dims) {
      numel *= d;
      if (numel > Number.MAX_SAFE_INTEGER)
        fail(file, 'shape', `shape ${describeValue(dims)} has too many elements`, name);
    }
    const size = SAFETENSORS_DTYPE_SIZES[dtype as SafetensorsDtype];
    if (numel * size !== e - b) {
      fail(
        file,
        'shape',
        `shape ${describeValue(dims)} × ${dtype} (${size} bytes) needs ${numel * size} bytes but data_offsets [${b}, ${e}] hold ${e - b}`,
        name,
      );
    }
    entries.push({ name, dtype: dtype as SafetensorsDtype, shape: dims, begin: dataStart + b, end: dataStart + e });
  }

  // The data section must be tiled exactly: sorted by offset, each tensor starts where the last ended.
  entries.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let cursor = dataStart;
  for (const entry of entries) {
    if (entry.begin !== cursor) {
      const what =
        entry.begin < cursor
          ? 'overlaps the previous tensor'
          : `leaves a gap of ${entry.begin - cursor} bytes before it`;
      fail(
        file,
        'data_offsets',
        `data_offsets [${entry.begin - dataStart}, ${entry.end - dataStart}] ${what}`,
        entry.name,
      );
    }
    cursor = entry.end;
  }
  if (cursor !== totalBytes) {
    fail(
      file,
      'data',
      `tensors cover ${cursor - dataStart} bytes of a ${dataBytes}-byte data section; the file has trailing bytes or is corrupt`,
    );
  }
  return { entries, metadata, dataStart };
}

/** Reads and validates the header of a complete safetensors buffer. */
export function readSafetensorsHeader(bytes: Uint8Array, file = '<memory>'): SafetensorsHeader {
  const n = readHeaderLength(bytes, bytes.length, file);
  return parseHeader(bytes.subarray(8, 8 + n), bytes.length, file);
}
