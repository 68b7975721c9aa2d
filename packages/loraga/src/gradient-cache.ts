import type { Module } from '@lora/nn';
import {
  type RawTensor,
  SafetensorsError,
  readSafetensorsHeaderFrom,
  serializeSafetensors,
  streamSafetensors,
} from '@lora/tensor';
import { LoraGaCacheError } from './errors';
import type { StoredGradient } from './gradient-store';
import type { LoraGaTarget } from './targets';
import { hashParameters } from './weight-hash';

/** The `format` a LoRA-GA cache records in its safetensors metadata. */
export const CACHE_FORMAT = 'lora-ga-gradients';
const CACHE_VERSION = '1';
/** PEFT's cache keys: `<module path>._peft_loraga_grad`. */
const SUFFIX = '._peft_loraga_grad';

type Fs = typeof import('node:fs/promises');
type Path = typeof import('node:path');

type TensorNode = typeof import('@lora/tensor/node');

/** Node's modules, imported when a cache is used, so that the package bundles for browsers (a cache file is a Node feature). */
async function nodeModules(): Promise<{ fs: Fs; path: Path; node: TensorNode }> {
  const names = ['node:fs/promises', 'node:path', '@lora/tensor/node'];
  const [fs, path, node] = await Promise.all(names.map((n) => import(/* @vite-ignore */ n)));
  return { fs, path, node };
}

/** What a cache's metadata records of each target. */
interface CachedTarget {
  path: string;
  shape: [number, number];
  /** Backward passes through the layer (0: no gradient reached it; no tensor stored). */
  count: number;
}

/** Whether a non-empty file is at `file` (PEFT reads the cache when it exists and is not empty). */
export async function cacheExists(file: string): Promise<boolean> {
  const { fs } = await nodeModules();
  try {
    const info = await fs.stat(file);
    if (info.isDirectory())
      throw new LoraGaCacheError(file, 'file', 'is a directory; cacheFile names a file, e.g. grads/loraga.safetensors');
    return info.size > 0;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw e;
  }
}

/**
 * Fails before the estimation when the cache could not be written after it (PEFT finds out after the
 * whole estimation, and crashes on a bare file name): the nearest existing folder on the way must be a
 * writable directory. Nothing is created here.
 */
export async function checkCacheWritable(file: string): Promise<void> {
  const { fs, path } = await nodeModules();
  let dir = path.dirname(path.resolve(file));
  for (;;) {
    try {
      const info = await fs.stat(dir);
      if (!info.isDirectory())
        throw new LoraGaCacheError(file, 'file', `cannot be written: ${dir} is a file, not a folder`);
      await fs.access(dir, fs.constants.W_OK).catch(() => {
        throw new LoraGaCacheError(file, 'file', `cannot be written: the folder ${dir} is not writable`);
      });
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw e;
      const up = path.dirname(dir);
      if (up === dir) return;
      dir = up;
    }
  }
}

/**
 * Writes the gradients as a safetensors file (atomically, creating its folder), with the targets, their
 * shapes and backward counts, and a fingerprint of every parameter of the model in its metadata.
 */
export async function writeGradientCache(
  file: string,
  model: Module,
  targets: LoraGaTarget[],
  gradients: Map<string, StoredGradient>,
  counts: Map<string, number>,
  passes: number,
): Promise<void> {
  const { fs, path, node } = await nodeModules();
  const tensors: Record<string, RawTensor> = {};
  const listed: CachedTarget[] = [];
  for (const t of targets) {
    const g = gradients.get(t.path);
    listed.push({
      path: t.path,
      shape: [...t.module.weight.shape] as [number, number],
      count: counts.get(t.path) ?? 0,
    });
    if (!g) continue;
    const values = g.values ?? ((await g.tensor.data()) as Float32Array);
    tensors[`${t.path}${SUFFIX}`] = { dtype: 'float32', shape: g.shape, values };
  }
  const metadata = {
    format: CACHE_FORMAT,
    version: CACHE_VERSION,
    created_by: '@lora/loraga',
    targets: JSON.stringify(listed),
    passes: String(passes),
    weights: JSON.stringify(await hashParameters(model)),
  };
  const bytes = await serializeSafetensors(tensors, { metadata });
  await fs.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await node.writeFileAtomic(file, bytes);
}

function list(names: string[], max = 5): string {
  return names.length > max ? `${names.slice(0, max).join(', ')} and ${names.length - max} more` : names.join(', ');
}

/**
 * Reads a cache made by {@link writeGradientCache} and checks it against the model: the same targets,
 * the same weight shapes, float32 gradients, and the same parameters (by fingerprint). Any difference
 * is a {@link LoraGaCacheError} naming it; nothing is returned then. The gradients come back in host
 * memory, read one at a time.
 */
export async function readGradientCache(
  file: string,
  model: Module,
  targets: LoraGaTarget[],
): Promise<{ gradients: Map<string, StoredGradient>; passes: number }> {
  const { node } = await nodeModules();
  const source = await node.openFileBytes(file);
  try {
    let header: Awaited<ReturnType<typeof readSafetensorsHeaderFrom>>;
    try {
      header = await readSafetensorsHeaderFrom(source);
    } catch (e) {
      if (!(e instanceof SafetensorsError)) throw e;
      const head = await source.read(0, Math.min(4, source.size));
      const zip = head[0] === 0x50 && head[1] === 0x4b; // 'PK': torch.save's zip, PEFT's own cache
      throw new LoraGaCacheError(
        file,
        'format',
        zip
          ? "is a torch.save file (PEFT's cache format), which is a pickle and is not read here; delete it and let preprocessLoraga estimate and write a safetensors cache"
          : `is not a safetensors file (${e.message}); delete it or pass another cacheFile`,
      );
    }
    const meta = header.metadata;
    if (meta.format !== CACHE_FORMAT)
      throw new LoraGaCacheError(
        file,
        'format',
        `is a safetensors file but not a LoRA-GA gradient cache (its metadata has format ${JSON.stringify(meta.format ?? null)}, not '${CACHE_FORMAT}'); pass another cacheFile`,
      );
    if (meta.version !== CACHE_VERSION)
      throw new LoraGaCacheError(
        file,
        'format',
        `has cache version ${JSON.stringify(meta.version)}; this @lora/loraga reads version ${CACHE_VERSION}. Delete it to estimate again`,
      );
    let cached: CachedTarget[];
    let weights: Record<string, string>;
    try {
      cached = JSON.parse(meta.targets ?? 'null');
      weights = JSON.parse(meta.weights ?? 'null');
      if (!Array.isArray(cached) || typeof weights !== 'object' || weights === null) throw new Error('missing');
    } catch {
      throw new LoraGaCacheError(
        file,
        'format',
        'has unreadable targets or weights metadata; delete it to estimate again',
      );
    }
    const want = new Set(targets.map((t) => t.path));
    const have = new Set(cached.map((t) => t.path));
    const missing = [...want].filter((p) => !have.has(p));
    const extra = [...have].filter((p) => !want.has(p));
    if (missing.length || extra.length)
      throw new LoraGaCacheError(
        file,
        'targets',
        `was made for other targets (${[missing.length ? `missing ${list(missing)}` : '', extra.length ? `not targeted now: ${list(extra)}` : ''].filter(Boolean).join('; ')}); use the targetModules it was made with, or delete it to estimate again`,
      );
    const entries = new Map(header.entries.map((e) => [e.name, e]));
    const byPath = new Map(cached.map((t) => [t.path, t]));
    for (const t of targets) {
      const shape = t.module.weight.shape.join(', ');
      const c = byPath.get(t.path) as CachedTarget;
      const entry = entries.get(`${t.path}${SUFFIX}`);
      if (!Array.isArray(c.shape) || c.shape.join(', ') !== shape || (entry && entry.shape.join(', ') !== shape))
        throw new LoraGaCacheError(
          file,
          'shape',
          `holds a gradient of shape [${(entry?.shape ?? c.shape).join(', ')}] for '${t.path}', whose weight is [${shape}]: the cache is for another model; delete it to estimate again`,
        );
      if (entry && entry.dtype !== 'F32')
        throw new LoraGaCacheError(file, 'dtype', `holds '${entry.name}' as ${entry.dtype}; LoRA-GA caches are F32`);
      if (!entry && c.count > 0)
        throw new LoraGaCacheError(
          file,
          'format',
          `lists '${t.path}' with ${c.count} backward passes but holds no gradient for it`,
        );
    }
    const now = await hashParameters(model);
    const changed = Object.keys(now).filter((n) => weights[n] !== now[n]);
    const gone = Object.keys(weights).filter((n) => !(n in now));
    if (changed.length || gone.length)
      throw new LoraGaCacheError(
        file,
        'weights',
        `was estimated on other base weights (${[changed.length ? `different: ${list(changed)}` : '', gone.length ? `not in this model: ${list(gone)}` : ''].filter(Boolean).join('; ')}); the gradients are not this model's. Delete it (or pass another cacheFile) to estimate again`,
      );
    const gradients = new Map<string, StoredGradient>();
    const names = new Set(targets.map((t) => `${t.path}${SUFFIX}`));
    for await (const { entry, tensor } of streamSafetensors(source, { header, names })) {
      const path = entry.name.slice(0, -SUFFIX.length);
      gradients.set(path, { shape: entry.shape as [number, number], values: tensor.values as Float32Array });
    }
    return { gradients, passes: Number(meta.passes ?? 0) };
  } finally {
    await source.close();
  }
}
