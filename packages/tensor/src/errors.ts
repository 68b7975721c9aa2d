/**
 * Errors raised by `@lora/tensor`. Each names what was wrong and what to do about it.
 */

/**
 * A short, bounded rendering of any value for an error message (what a file or config held): `JSON.stringify` for plain values, cut
 * at `max` characters; never throws (deeply nested or cyclic values, BigInts, symbols).
 *
 * @example
 * ```ts
 * describeValue('8');          // '"8"'
 * describeValue(deeplyNested); // '[…]'
 * ```
 */
export function describeValue(value: unknown, max = 80): string {
  let text: string;
  try {
    text = value === undefined ? 'undefined' : (JSON.stringify(value) ?? String(value));
  } catch {
    text = Array.isArray(value) ? '[…]' : typeof value === 'object' && value !== null ? '{…}' : String(value);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Where in a safetensors file a problem was found. */
export interface SafetensorsErrorDetail {
  /** File path or label of the buffer being read (`<memory>` for in-memory bytes). */
  file: string;
  /** Tensor name, when the problem belongs to one tensor. */
  tensor?: string;
  /** The header field or part of the file at fault: `header_length`, `header`, `dtype`, `shape`, `data_offsets`, `__metadata__`, `name`, `data`, `weight_map`. */
  field: string;
}

/**
 * A safetensors file (or buffer, or sharded index) is malformed or cannot be represented.
 *
 * @example
 * ```ts
 * try { parseSafetensors(bytes); } catch (e) {
 *   if (e instanceof SafetensorsError) console.error(e.file, e.tensor, e.field);
 * }
 * ```
 */
export class SafetensorsError extends Error {
  override readonly name = 'SafetensorsError';
  readonly file: string;
  readonly tensor: string | undefined;
  readonly field: string;

  constructor(detail: SafetensorsErrorDetail, message: string) {
    const where = detail.tensor === undefined ? '' : ` tensor '${detail.tensor}'`;
    super(`${detail.file}:${where} ${detail.field}: ${message}`);
    this.file = detail.file;
    this.tensor = detail.tensor;
    this.field = detail.field;
  }
}

/**
 * A backend was asked for but cannot start here. `hint` says what to install or set.
 *
 * @example
 * ```ts
 * try { await initBackend('webgpu'); } catch (e) {
 *   if (e instanceof BackendUnavailableError) console.error(e.hint);
 * }
 * ```
 */
export class BackendUnavailableError extends Error {
  override readonly name = 'BackendUnavailableError';
  readonly backend: string;
  readonly reason: string;
  readonly hint: string;

  constructor(backend: string, reason: string, hint: string) {
    super(`backend '${backend}' is not available: ${reason}. ${hint}`);
    this.backend = backend;
    this.reason = reason;
    this.hint = hint;
  }
}

/** A function leaked (or freed someone else's) tensors; see {@link assertNoLeaks}. */
export class TensorLeakError extends Error {
  override readonly name = 'TensorLeakError';
  readonly before: number;
  readonly after: number;

  constructor(label: string, before: number, after: number) {
    const diff = after - before;
    super(
      `${label}: tf.memory().numTensors went from ${before} to ${after} (${diff > 0 ? '+' : ''}${diff}). ` +
        'Wrap intermediates in tf.tidy() or dispose them, and return only what the caller owns.',
    );
    this.before = before;
    this.after = after;
  }
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * The wasm backend ran out of memory: WebAssembly's 32-bit heap holds at most 4 GiB, and an
 * allocation (a tensor, or XNNPACK's packed copy of a matrix) did not fit. Raised in place of the
 * abort or garbage results tfjs-backend-wasm would give; the operation's other tensors are freed.
 *
 * @example
 * ```ts
 * try { await train(model, batches, options); } catch (e) {
 *   if (e instanceof WasmOutOfMemoryError) console.error(`needs more than ${e.neededBytes} bytes`);
 * }
 * ```
 */
export class WasmOutOfMemoryError extends Error {
  override readonly name = 'WasmOutOfMemoryError';
  /** The allocation that failed (0 when XNNPACK's own allocation failed and its size is unknown). */
  readonly requestedBytes: number;
  /** Bytes the backend's tensors held on the heap when it failed. */
  readonly liveBytes: number;
  /** The most the heap can grow to. */
  readonly limitBytes: number;
  /** At least this much would have been needed at that moment: live tensors plus the failed request. */
  readonly neededBytes: number;

  constructor(what: string, requestedBytes: number, liveBytes: number, limitBytes: number) {
    const needed = liveBytes + requestedBytes;
    super(
      `the wasm backend is out of memory: ${what}${requestedBytes > 0 ? ` (${mib(requestedBytes)})` : ''} did not fit while tensors held ` +
        `${mib(liveBytes)} of the WebAssembly heap, whose limit is ${mib(limitBytes)}; this step needs more than ` +
        `${mib(needed)} plus XNNPACK's packed weights. Use shorter sequences or smaller batches, ` +
        "gradientCheckpointing, a loss without logits (returnLogits: false), or the 'tensorflow' backend (no such limit).",
    );
    this.requestedBytes = requestedBytes;
    this.liveBytes = liveBytes;
    this.limitBytes = limitBytes;
    this.neededBytes = needed;
  }
}

const FILE_PROBLEMS: Record<string, string> = {
  ENOENT: 'does not exist',
  EISDIR: 'is a directory, not a file',
  ENOTDIR: 'is not a directory (or a part of its path is a file)',
  EACCES: 'cannot be accessed: permission denied; check its permissions and its folder’s',
  EPERM: 'cannot be accessed: operation not permitted; check its permissions',
  ELOOP: 'is a symbolic link loop',
  EMFILE: 'cannot be opened: too many open files',
  ENOSPC: 'cannot be written: no space left on the device',
  EROFS: 'cannot be written: the file system is read-only',
  EEXIST: 'already exists',
};

/**
 * A file or directory could not be read or written (missing, a directory where a file was expected,
 * permissions): names the path the user gave, not a temporary one, and the system's error code.
 *
 * @example
 * ```ts
 * try { await loadSafetensors('model/'); } catch (e) {
 *   if (e instanceof FileAccessError) console.error(e.file, e.code);
 * }
 * ```
 */
export class FileAccessError extends Error {
  override readonly name = 'FileAccessError';
  readonly file: string;
  readonly code: string | undefined;

  constructor(file: string, message: string, code?: string) {
    super(`${file}: ${message}`);
    this.file = file;
    this.code = code;
  }

  /** Wraps a Node file-system error (ENOENT, EISDIR, EACCES, …) as a FileAccessError naming `file`; anything else is returned as it is. */
  static from(file: string, e: unknown, what = 'file'): Error {
    if (e instanceof FileAccessError || e instanceof SafetensorsError) return e;
    const code = (e as { code?: unknown } | null)?.code;
    if (typeof code !== 'string') return e instanceof Error ? e : new Error(String(e));
    return new FileAccessError(file, `${what} ${FILE_PROBLEMS[code] ?? `cannot be used (${code})`}`, code);
  }
}

/** Why a Hugging Face Hub file could not be had; see {@link HubError}. */
export type HubErrorCode =
  /** Offline (`localFilesOnly`, `HF_HUB_OFFLINE`, or the Hub unreachable) and the cache lacks it. */
  | 'not-cached'
  /** The repository, revision or file does not exist (or is private and no token was sent). */
  | 'not-found'
  /** The Hub refused the token, or the repository is gated / private. */
  | 'unauthorized'
  /** The Hub could not be reached or answered with an error. */
  | 'network'
  /** A downloaded file did not have the size or hash the Hub announced. */
  | 'corrupt'
  /** The caller's `AbortSignal` fired. */
  | 'aborted'
  /** The repo id or a file name is not valid. */
  | 'invalid';

/**
 * A Hugging Face Hub repository or file could not be resolved from the cache or downloaded. The
 * message says where the cache is and what to do.
 *
 * @example
 * ```ts
 * try { await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', { localFilesOnly: true }); }
 * catch (e) { if (e instanceof HubError && e.code === 'not-cached') console.error(e.message); }
 * ```
 */
export class HubError extends Error {
  override readonly name = 'HubError';
  readonly code: HubErrorCode;
  readonly repo: string;
  readonly file: string | undefined;

  constructor(
    code: HubErrorCode,
    repo: string,
    file: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.code = code;
    this.repo = repo;
    this.file = file;
  }
}
