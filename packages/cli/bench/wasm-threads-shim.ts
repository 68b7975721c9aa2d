/**
 * Bench-only: starts tfjs-backend-wasm's threaded build in Node, which tfjs turns off there
 * (`WASM_HAS_MULTITHREAD_SUPPORT` is false under Node, tfjs issue #3830). Two hacks on the bundle's
 * internals, never for library code: the worker and main scripts tfjs hands to `Worker` as blob: URLs
 * are written to temporary files (Node's Worker takes paths), and `os.cpus()` reports twice the CPUs,
 * because tfjs-wasm uses half the logical cores (one thread on a 2-vCPU machine) whatever is asked.
 * Import, then call {@link startThreadedWasm} instead of initBackend('wasm').
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';

const dir = mkdtempSync(join(os.tmpdir(), 'tfjs-wasm-threads-'));
const OriginalBlob = globalThis.Blob;
const texts = new WeakMap<object, string>();
let mainPath: string | null = null;
globalThis.Blob = class extends OriginalBlob {
  constructor(parts?: BlobPart[], options?: BlobPropertyBag) {
    super(parts, options);
    if (Array.isArray(parts) && parts.every((p) => typeof p === 'string')) {
      const text = (parts as string[]).join('');
      texts.set(this, text);
      if (text.startsWith('var WasmBackendModuleThreadedSimd')) {
        mainPath = join(dir, 'main.js');
        // the bundle's main script expects these from its CommonJS wrapper
        writeFileSync(
          mainPath,
          `var require$$0=require('fs'),require$$1=require('path'),require$$3=require('perf_hooks'),require$$4=require('os'),commonjsGlobal=globalThis;\n${text}`,
        );
      }
    }
  }
} as typeof Blob;
const originalCreate = URL.createObjectURL.bind(URL);
let count = 0;
URL.createObjectURL = (blob: Blob) => {
  const text = texts.get(blob);
  if (text === undefined) return originalCreate(blob);
  const file = join(dir, `blob${count++}.js`);
  const prefix = mainPath ? `URL.createObjectURL=()=>${JSON.stringify(mainPath)};URL.revokeObjectURL=()=>{};\n` : '';
  writeFileSync(file, prefix + text);
  return file;
};
const cpus = os.cpus;
os.cpus = () => {
  const c = cpus();
  return [...c, ...c];
};

/** The threaded wasm backend with `threads` workers; returns the thread count it runs. */
export async function startThreadedWasm(threads: number): Promise<number> {
  const require = createRequire(import.meta.url);
  const wasm = require('@tensorflow/tfjs-backend-wasm') as {
    setThreadsCount(n: number): void;
    getThreadsCount(): number;
  };
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  wasm.setThreadsCount(threads);
  await tf.setBackend('wasm');
  await tf.ready();
  return wasm.getThreadsCount();
}
