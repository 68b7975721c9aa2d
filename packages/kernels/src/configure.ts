import * as tf from '@tensorflow/tfjs-core';
import { ensureDispatchCache, setDispatchCache } from '@lora/tensor';
import { installMatmulOverride } from './matmul';
import { DEFAULT_KERNEL_OPTIONS, type KernelOptions, setKernelOptions } from './options';

const MATMUL = ['tfjs', 'tiled', 'tiled-64', 'tiled-128', 'tiled-128x64', 'tiled-64x128'];
const MEDIUM = ['none', '128x64', '64x128'];

/**
 * Chooses code paths (see {@link KernelOptions}); options left out return to their defaults.
 * Returns the options now in force. Asking for a matmul other than `'tfjs'` needs the webgpu backend
 * started (the default `'tiled'` installs itself once webgpu runs).
 *
 * @example
 * ```ts
 * configureKernels({ fused: false });       // the composite ops everywhere, e.g. to compare
 * configureKernels({ matmul: 'tiled' });    // this package's matmul program on webgpu
 * ```
 */
export function configureKernels(options: Partial<KernelOptions> = {}): KernelOptions {
  for (const [k, v] of Object.entries(options)) {
    if (!(k in DEFAULT_KERNEL_OPTIONS))
      throw new Error(
        `configureKernels: unknown option '${k}'; options are ${Object.keys(DEFAULT_KERNEL_OPTIONS).join(', ')}`,
      );
    if (k === 'matmul' && !MATMUL.includes(v as string))
      throw new Error(`configureKernels: matmul must be one of ${MATMUL.join(', ')}; got ${JSON.stringify(v)}`);
    if (k === 'largeTileGroups' && !(Number.isInteger(v) && (v as number) >= 1))
      throw new Error(`configureKernels: largeTileGroups must be a positive integer, got ${JSON.stringify(v)}`);
    if (k === 'mediumTile' && !MEDIUM.includes(v as string))
      throw new Error(`configureKernels: mediumTile must be one of ${MEDIUM.join(', ')}; got ${JSON.stringify(v)}`);
    if (k === 'matmulDepth' && v !== 16 && v !== 32 && v !== 'auto')
      throw new Error(`configureKernels: matmulDepth must be 16, 32 or 'auto', got ${JSON.stringify(v)}`);
    const nonBoolean = ['matmul', 'largeTileGroups', 'mediumTile', 'matmulDepth'];
    if (!nonBoolean.includes(k) && typeof v !== 'boolean')
      throw new Error(`configureKernels: ${k} must be true or false, got ${JSON.stringify(v)}`);
  }
  const next = { ...DEFAULT_KERNEL_OPTIONS, ...options };
  // an explicit request needs webgpu loaded (installMatmulOverride says so); the default installs
  // itself when webgpu first runs an op of this package
  if (next.matmul !== 'tfjs' && (options.matmul !== undefined || tf.getBackend() === 'webgpu')) installMatmulOverride();
  setKernelOptions(next);
  setDispatchCache(next.dispatchCache);
  if (tf.getBackend() === 'webgpu') ensureDispatchCache();
  return { ...next };
}
