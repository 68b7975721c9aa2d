/**
 * Progress, cancellation and yielding for decompositions that take seconds to minutes.
 */

/** Where a long decomposition stands: `done` of `total` units of its current stage. */
export interface LinalgProgress {
  /** e.g. `'qr'`, `'bidiagonalize'`, `'solve'`, `'vectors'` (svd); `'iterate'` (svdTruncated) */
  stage: string;
  done: number;
  total: number;
}

/** Options of every decomposition that can run long on tensors. */
export interface LongRunOptions {
  /** Cancels between blocks: the promise rejects with `signal.reason` and no tensor is left behind. */
  signal?: AbortSignal;
  /** Called between blocks of work. */
  onProgress?: (progress: LinalgProgress) => void;
}

const YIELD_EVERY_MS = 25;

/** Lets the event loop run (timers, I/O, a browser's rendering): a macrotask, not a microtask. */
export function yieldToEventLoop(): Promise<void> {
  const g = globalThis as { setImmediate?: (f: () => void) => void; MessageChannel?: typeof MessageChannel };
  if (typeof g.setImmediate === 'function') {
    const si = g.setImmediate;
    return new Promise((resolve) => si(resolve));
  }
  if (typeof g.MessageChannel === 'function') {
    const ch = new g.MessageChannel();
    return new Promise((resolve) => {
      ch.port1.onmessage = () => {
        ch.port1.close();
        resolve();
      };
      ch.port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * A checkpoint for one stage of a long run: reports progress, throws if the signal is aborted, and
 * yields to the event loop when the last yield is more than a frame's time ago.
 * @internal
 */
export function checkpoints(options: LongRunOptions): (stage: string, done: number, total: number) => Promise<void> {
  let last = performance.now();
  options.signal?.throwIfAborted();
  return async (stage, done, total) => {
    options.onProgress?.({ stage, done, total });
    if (performance.now() - last >= YIELD_EVERY_MS) {
      await yieldToEventLoop();
      last = performance.now();
    }
    options.signal?.throwIfAborted();
  };
}
