import * as tf from '@tensorflow/tfjs-core';
import { WasmOutOfMemoryError } from './errors';

/** The Emscripten module inside tfjs-backend-wasm's backend object (tfjs 4.22). */
interface WasmModule {
  _malloc(bytes: number): number;
  _free(pointer: number): void;
  HEAPU8: Uint8Array;
  __loraGuard?: HeapGuard;
}

interface HeapGuard {
  live: number;
  peakLive: number;
  sizes: Map<number, number>;
}

/** The heap limit of tfjs-backend-wasm's build (Emscripten's getHeapMax: 4 GiB less one 64 KiB page). */
const WASM_HEAP_LIMIT = 4294901760;

function wasmModule(): WasmModule | null {
  const backend = tf.engine().backendNames().includes('wasm')
    ? (tf.findBackend('wasm') as unknown as { wasm?: WasmModule } | null)
    : null;
  return backend?.wasm ?? null;
}

/**
 * Makes the wasm backend fail with a {@link WasmOutOfMemoryError} instead of writing through a null
 * pointer when the heap is full: tfjs-backend-wasm takes `_malloc`'s result without checking it, so
 * a tensor that does not fit is placed at address 0 (then `memory access out of bounds`, or
 * silently wrong numbers). Also counts the bytes of live allocations, for {@link memoryUsage}.
 */
export function guardWasmHeap(): void {
  const mod = wasmModule();
  if (!mod || mod.__loraGuard) return;
  const guard: HeapGuard = { live: 0, peakLive: 0, sizes: new Map() };
  // Emscripten's exports are stubs that replace themselves with the real function on their first
  // call (and would replace this wrapper with it): take the real ones.
  mod._free(mod._malloc(16));
  const malloc = mod._malloc.bind(mod);
  const free = mod._free.bind(mod);
  mod._malloc = (bytes: number) => {
    // a request of 4 GiB or more would wrap around in the 32-bit argument and "succeed" small
    if (guard.live + bytes > WASM_HEAP_LIMIT)
      throw new WasmOutOfMemoryError('a tensor', bytes, guard.live, WASM_HEAP_LIMIT);
    const p = malloc(bytes) >>> 0;
    if (p === 0 && bytes > 0) throw new WasmOutOfMemoryError(`a tensor`, bytes, guard.live, WASM_HEAP_LIMIT);
    guard.sizes.set(p, bytes);
    guard.live += bytes;
    if (guard.live > guard.peakLive) guard.peakLive = guard.live;
    return p;
  };
  mod._free = (pointer: number) => {
    const p = pointer >>> 0;
    guard.live -= guard.sizes.get(p) ?? 0;
    guard.sizes.delete(p);
    free(pointer);
  };
  mod.__loraGuard = guard;
  checkXnnpackAfterKernels(guard);
}

/** Set by the wasm module's error printer when XNNPACK reported xnn_status_out_of_memory. */
let xnnOutOfMemory = false;

/**
 * Runs `init` (the wasm backend's start) with a console.warn that the module captures as its error
 * printer: XNNPACK's "Got status 6" (xnn_status_out_of_memory, after which tfjs returns a product it
 * never computed) is noted, and {@link guardWasmHeap}'s kernel wrapper raises it as a
 * {@link WasmOutOfMemoryError} when the op returns. Every other message goes to the console as before.
 */
export async function withXnnpackErrors<T>(init: () => Promise<T>): Promise<T> {
  const original = console.warn;
  const printer = (...args: unknown[]) => {
    const text = typeof args[0] === 'string' ? args[0] : '';
    if (/XNN status for .* Got status 6\b/.test(text)) xnnOutOfMemory = true;
    else original.apply(console, args);
  };
  console.warn = printer;
  try {
    return await init();
  } finally {
    // the module keeps the printer it bound; the console gets its own function back
    if (console.warn === printer) console.warn = original;
  }
}

/** Wraps every wasm kernel: an op during which XNNPACK ran out of memory frees its outputs and throws. */
function checkXnnpackAfterKernels(guard: HeapGuard): void {
  for (const kernel of tf.getKernelsForBackend('wasm')) {
    const run = kernel.kernelFunc as ((args: unknown) => unknown) & { loraChecked?: boolean };
    if (run.loraChecked) continue;
    const checked = ((args: { backend: { disposeData(id: unknown): void } }) => {
      xnnOutOfMemory = false;
      const out = run(args);
      if (xnnOutOfMemory) {
        xnnOutOfMemory = false;
        for (const info of [out].flat() as { dataId: unknown }[]) args.backend.disposeData(info.dataId);
        throw new WasmOutOfMemoryError(
          `XNNPACK's packed copy of an operand of ${kernel.kernelName}`,
          0,
          guard.live,
          WASM_HEAP_LIMIT,
        );
      }
      return out;
    }) as typeof run;
    checked.loraChecked = true;
    (kernel as { kernelFunc: unknown }).kernelFunc = checked;
  }
}

/** What {@link memoryUsage} reports. */
export interface MemoryUsage {
  backend: string;
  numTensors: number;
  /** tf.memory().numBytes: tensors' bytes, a buffer shared by several tensors counted for each. */
  numBytes: number;
  /** wasm: the heap's size, which only grows: the high-water mark of everything the backend allocated, XNNPACK's included. */
  wasmHeapBytes?: number;
  /** wasm: the heap's limit. */
  wasmHeapLimitBytes?: number;
  /** wasm: bytes of the backend's live allocations (tensor buffers, each once), and the most they reached since it started. */
  wasmLiveBytes?: number;
  wasmPeakLiveBytes?: number;
}

/**
 * Memory held by tensors on the active backend, and on wasm the heap's size, limit and live bytes.
 *
 * @example
 * ```ts
 * const { wasmHeapBytes, wasmLiveBytes } = memoryUsage();
 * ```
 */
export function memoryUsage(): MemoryUsage {
  const m = tf.memory();
  const out: MemoryUsage = { backend: tf.getBackend(), numTensors: m.numTensors, numBytes: m.numBytes };
  const mod = tf.getBackend() === 'wasm' ? wasmModule() : null;
  if (mod) {
    out.wasmHeapBytes = mod.HEAPU8.length;
    out.wasmHeapLimitBytes = WASM_HEAP_LIMIT;
    if (mod.__loraGuard) {
      out.wasmLiveBytes = mod.__loraGuard.live;
      out.wasmPeakLiveBytes = mod.__loraGuard.peakLive;
    }
  }
  return out;
}
