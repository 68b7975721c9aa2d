/**
 * Errors raised by `@lora/tensor`. Each names what was wrong and what to do about it.
 */

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
