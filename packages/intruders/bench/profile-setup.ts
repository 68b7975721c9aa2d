/**
 * What the per-phase profiles (profile-cached.ts, profile-sum.ts) share: the backend from
 * LORA_BACKEND (default wasm), the shapes from SHAPES (default the 123M Llama's four), a process CPU
 * timer, and random layers drawn as bench/peer_intruders.py draws them (W with std 0.02, B with std
 * 0.05, A uniform in ±1/√n), from one seeded generator in a fixed order.
 */
import { type Matrix64, matrix64 } from '@lora/linalg';
import { initBackend } from '@lora/tensor';

export async function setUp(): Promise<{ backend: string; shapes: [number, number][] }> {
  const backend = (process.env.LORA_BACKEND ?? 'wasm') as 'wasm';
  await initBackend(backend, {
    importers: {
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    },
  });
  const shapes = (process.env.SHAPES ?? '1024x1024,256x1024,2816x1024,1024x2816')
    .split(',')
    .map((s) => s.split('x').map(Number) as [number, number]);
  return { backend, shapes };
}

let seed = 12345;
const uniform = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return (seed + 0.5) / 2147483648;
};
const gauss = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());

/** W (m×n values), L = B (m×r) and R = A (r×n) of one random layer. */
export function randomLayer(m: number, n: number, r: number): { w: Float32Array; left: Matrix64; right: Matrix64 } {
  const w = Float32Array.from({ length: m * n }, () => 0.02 * gauss());
  const left = matrix64(
    m,
    r,
    Float64Array.from({ length: m * r }, () => 0.05 * gauss()),
  );
  const bound = 1 / Math.sqrt(n);
  const right = matrix64(
    r,
    n,
    Float64Array.from({ length: r * n }, () => bound * (2 * uniform() - 1)),
  );
  return { w, left, right };
}

/** The value of f and the process CPU seconds it took. */
export async function cpu<T>(f: () => Promise<T> | T): Promise<[T, number]> {
  const c0 = process.cpuUsage();
  const value = await f();
  const used = process.cpuUsage(c0);
  return [value, (used.user + used.system) / 1e6];
}
