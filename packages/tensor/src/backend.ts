import * as tf from '@tensorflow/tfjs-core';
import { importOptional, isNode } from './environment';
import { BackendUnavailableError } from './errors';
import { guardWasmHeap, withXnnpackErrors } from './wasm-memory';
import { ensureDispatchCache } from './webgpu-dispatch-cache';

/** The backends `@lora` can run on. */
export type BackendName = 'cpu' | 'wasm' | 'webgpu' | 'tensorflow';

/** WebGPU settings. In Node they configure Dawn (the `webgpu` package); in a browser, `navigator.gpu`. */
export interface WebGPUOptions {
  /**
   * Node only: toggles passed to Dawn's `create()`, e.g. `['backend=opengles']` for Mesa's software
   * OpenGL ES (then `featureLevel: 'compatibility'` too). Defaults to `LORA_DAWN_OPTIONS`
   * (space-separated) or none: Dawn picks Vulkan, Metal or D3D12.
   */
  dawnOptions?: string[];
  /** `'compatibility'` is needed for Dawn's OpenGL ES backend. Defaults to `LORA_WEBGPU_FEATURE_LEVEL` or `'core'`. */
  featureLevel?: 'core' | 'compatibility';
  powerPreference?: 'low-power' | 'high-performance';
  /**
   * Accept a software adapter (SwiftShader, llvmpipe): correct but slower than `wasm`.
   * Defaults to true when `'webgpu'` is asked for by name and false for `'auto'`.
   */
  allowSoftware?: boolean;
}

/** Options for {@link initBackend} and {@link listBackends}. */
export interface InitBackendOptions {
  webgpu?: WebGPUOptions;
  wasm?: {
    /** Where the `.wasm` binaries are served from, in a browser (tfjs `setWasmPaths`). */
    wasmPaths?: string | Record<string, string>;
    /** Browser only: worker threads for the wasm backend (tfjs `setThreadsCount`). */
    threads?: number;
  };
  /** Silence tfjs's Node banner and deprecation warnings (sets the `PROD` flag). Default true. */
  quiet?: boolean;
  /**
   * How to import the optional packages. By default they are imported by name at run time, which
   * bundlers leave alone; a bundled app passes literal imports so that its bundler includes them:
   * `{ importers: { '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm') } }`.
   */
  importers?: Partial<Record<OptionalPackage, () => Promise<unknown>>>;
}

/** The optional peer packages {@link initBackend} may import. */
export type OptionalPackage =
  | '@tensorflow/tfjs-backend-cpu'
  | '@tensorflow/tfjs-backend-wasm'
  | '@tensorflow/tfjs-backend-webgpu'
  | '@tensorflow/tfjs-node'
  | '@tensorflow/tfjs-node-gpu'
  | 'webgpu';

function load<T>(pkg: OptionalPackage, options: InitBackendOptions): Promise<T | null> {
  const importer = options.importers?.[pkg];
  return importer ? (importer() as Promise<T>) : importOptional<T>(pkg);
}

/** What {@link initBackend} chose. */
export interface BackendInfo {
  name: BackendName;
  /** The device or runtime, e.g. `NVIDIA H200 (nvidia hopper)` or `WebAssembly SIMD, 1 thread`. */
  adapter: string;
  /** True when a GPU API is emulated on the CPU (SwiftShader, llvmpipe): correct but slow. */
  software: boolean;
  platform: 'node' | 'browser';
}

/** One row of {@link listBackends}. */
export interface BackendAvailability {
  name: BackendName;
  available: boolean;
  adapter?: string;
  software?: boolean;
  /** Why it is not available. */
  reason?: string;
  /** What to install or set to make it available. */
  hint?: string;
}

type Probe =
  /**
   * `activate` starts the backend and may return a fuller adapter description than the probe had;
   * `gpu` (tensorflow only) says that TensorFlow computes on a CUDA device (tfjs-node-gpu with a GPU).
   */
  | { ok: true; adapter: string; software: boolean; gpu?: boolean; activate: () => Promise<string | undefined> }
  | { ok: false; reason: string; hint: string };

const TFJS = '4.22.0';
let current: BackendInfo | null = null;

async function setTfBackend(name: BackendName): Promise<void> {
  const ok = await tf.setBackend(name);
  if (!ok) {
    throw new BackendUnavailableError(
      name,
      `tf.setBackend('${name}') failed (tfjs printed the cause above)`,
      'Try another backend, or initBackend("auto").',
    );
  }
  await tf.ready();
}

async function ensurePackage(
  backend: BackendName,
  pkg: OptionalPackage,
  options: InitBackendOptions,
): Promise<Probe | null> {
  if (tf.findBackendFactory(backend) !== null) return null;
  const mod = await load(pkg, options).catch((e: unknown) => e as Error);
  if (mod === null)
    return { ok: false, reason: `${pkg} is not installed`, hint: `Install it: npm install ${pkg}@${TFJS}` };
  if (mod instanceof Error)
    return { ok: false, reason: `${pkg} failed to load: ${mod.message}`, hint: `Reinstall ${pkg}@${TFJS}.` };
  if (tf.findBackendFactory(backend) === null) {
    return {
      ok: false,
      reason: `${pkg} loaded but registered no '${backend}' backend`,
      hint: `Make sure only one copy of @tensorflow/tfjs-core@${TFJS} is installed (npm ls @tensorflow/tfjs-core).`,
    };
  }
  return null;
}

async function probeCpu(options: InitBackendOptions): Promise<Probe> {
  const missing = await ensurePackage('cpu', '@tensorflow/tfjs-backend-cpu', options);
  if (missing) return missing;
  return {
    ok: true,
    adapter: 'JavaScript (tfjs-backend-cpu)',
    software: false,
    activate: async () => {
      await setTfBackend('cpu');
      return undefined;
    },
  };
}

interface WasmModule {
  setWasmPaths(paths: string | Record<string, string>): void;
  setThreadsCount?(n: number): void;
  getThreadsCount?(): number;
}

async function probeWasm(options: InitBackendOptions): Promise<Probe> {
  let wasm: WasmModule | null = null;
  const registered = tf.findBackendFactory('wasm') !== null;
  if (!registered) {
    const pkg = '@tensorflow/tfjs-backend-wasm' as const;
    const loaded = await load<WasmModule>(pkg, options).catch((e: unknown) => e as Error);
    if (loaded === null)
      return { ok: false, reason: `${pkg} is not installed`, hint: `Install it: npm install ${pkg}@${TFJS}` };
    if (loaded instanceof Error)
      return { ok: false, reason: `${pkg} failed to load: ${loaded.message}`, hint: `Reinstall ${pkg}@${TFJS}.` };
    wasm = loaded;
  }
  return {
    ok: true,
    adapter: 'WebAssembly (tfjs-backend-wasm)',
    software: false,
    activate: async () => {
      if (options.wasm?.wasmPaths !== undefined) {
        if (!wasm)
          throw new BackendUnavailableError(
            'wasm',
            'wasmPaths was given but the wasm backend was registered elsewhere',
            'Call setWasmPaths yourself before importing, or let initBackend import the backend.',
          );
        wasm.setWasmPaths(options.wasm.wasmPaths);
      }
      if (options.wasm?.threads !== undefined) wasm?.setThreadsCount?.(options.wasm.threads);
      await withXnnpackErrors(() => setTfBackend('wasm'));
      guardWasmHeap();
      const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
      const threads = wasm?.getThreadsCount?.() ?? 1;
      return `WebAssembly${simd ? ' SIMD' : ''}, ${threads} thread${threads === 1 ? '' : 's'} (tfjs-backend-wasm)`;
    },
  };
}

interface TfjsNodeModule {
  version?: { 'tfjs-node'?: string };
  backend?: unknown;
}

async function probeTensorflow(options: InitBackendOptions): Promise<Probe> {
  const hint =
    'Install @tensorflow/tfjs-node (CPU) or @tensorflow/tfjs-node-gpu (CUDA). Where its installer cannot download libtensorflow, ' +
    'install with --ignore-scripts and build the addon against the tensorflow-cpu wheel (see the @lora/tensor README).';
  if (!isNode())
    return {
      ok: false,
      reason: 'the tensorflow backend exists only in Node',
      hint: 'Use webgpu or wasm in a browser.',
    };
  const failures: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'] as const) {
    if (tf.findBackendFactory('tensorflow') !== null) break;
    const mod = await load<TfjsNodeModule>(pkg, options).catch((e: unknown) => e as Error);
    if (mod instanceof Error) failures.push(`${pkg} is installed but failed to load: ${mod.message.split('\n')[0]}`);
  }
  if (tf.findBackendFactory('tensorflow') === null) {
    return {
      ok: false,
      reason: failures.length
        ? failures.join('; ')
        : 'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed',
      hint,
    };
  }
  // findBackend makes the backend without making it active: the binding then says whether TensorFlow
  // found a CUDA device (only tfjs-node-gpu's library can), which decides where 'auto' puts it. tfjs
  // keeps the backend it makes in its registry: later calls and setBackend reuse that one
  let gpu = false;
  try {
    gpu = (tf.findBackend('tensorflow') as { isUsingGpuDevice?: boolean } | null)?.isUsingGpuDevice === true;
  } catch (e) {
    return {
      ok: false,
      reason: `the tensorflow backend failed to start: ${(e as Error).message.split('\n')[0]}`,
      hint,
    };
  }
  return {
    ok: true,
    adapter: `TensorFlow C library (tfjs-node, ${gpu ? 'CUDA' : 'CPU'})`,
    software: false,
    gpu,
    activate: async () => {
      await setTfBackend('tensorflow');
      const binding = (tf.backend() as { binding?: { TF_Version?: string; isUsingGpuDevice?: () => boolean } }).binding;
      const gpu = binding?.isUsingGpuDevice?.() ? ', CUDA' : ', CPU';
      return `TensorFlow ${binding?.TF_Version ?? '(unknown version)'}${gpu} (tfjs-node)`;
    },
  };
}

interface GPUAdapterLike {
  info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
}
interface GPULike {
  requestAdapter(options?: Record<string, unknown>): Promise<GPUAdapterLike | null>;
}
interface DawnModule {
  create(options: string[]): GPULike;
  globals: Record<string, unknown>;
}

/** Describes an adapter, and whether it is a CPU emulation of a GPU. */
export function describeAdapter(adapter: GPUAdapterLike): { adapter: string; software: boolean } {
  const info = adapter.info ?? {};
  const parts = [
    info.description,
    info.vendor && info.architecture ? `${info.vendor} ${info.architecture}` : (info.vendor ?? info.architecture),
    info.device,
  ].filter((p): p is string => typeof p === 'string' && p.length > 0);
  const text = [...new Set(parts)].join(', ') || 'unnamed adapter';
  const software =
    adapter.isFallbackAdapter === true ||
    info.isFallbackAdapter === true ||
    /swiftshader|llvmpipe|lavapipe|softpipe|software|basic render/i.test(text);
  return { adapter: text, software };
}

const dawnInstances = new Map<string, GPULike>();
let webgpuFactory: ReturnType<typeof tf.findBackendFactory> | null = null;
let webgpuGpu: GPULike | null = null;

function webgpuSettings(options: WebGPUOptions) {
  const env = isNode() ? (globalThis as { process: { env: Record<string, string | undefined> } }).process.env : {};
  const dawnOptions = options.dawnOptions ?? (env.LORA_DAWN_OPTIONS ?? '').split(/\s+/).filter(Boolean);
  const fromEnv = env.LORA_WEBGPU_FEATURE_LEVEL;
  const featureLevel = options.featureLevel ?? (fromEnv === 'compatibility' ? 'compatibility' : 'core');
  return { dawnOptions, featureLevel, powerPreference: options.powerPreference };
}

/**
 * Wraps requestAdapter so that tfjs-backend-webgpu's own request gets our feature level and power
 * preference. A Proxy, not a copy: the native GPU object's other members must keep their receiver.
 */
function withAdapterDefaults(gpu: GPULike, defaults: Record<string, unknown>): GPULike {
  const request = gpu.requestAdapter.bind(gpu);
  const requestAdapter = (o: Record<string, unknown> = {}) => request({ ...o, ...defaults });
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === 'requestAdapter') return requestAdapter;
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

async function nodeGpu(dawnOptions: string[], options: InitBackendOptions): Promise<GPULike | Probe> {
  const key = dawnOptions.join(' ');
  const cached = dawnInstances.get(key);
  if (cached) return cached;
  const dawn = await load<DawnModule>('webgpu', options).catch((e: unknown) => e as Error);
  if (dawn === null) {
    return {
      ok: false,
      reason: "Dawn's 'webgpu' package is not installed",
      hint: 'Install it: npm install webgpu@0.6.2',
    };
  }
  if (dawn instanceof Error)
    return {
      ok: false,
      reason: `the 'webgpu' package failed to load: ${dawn.message}`,
      hint: 'Reinstall webgpu@0.6.2 for this platform.',
    };
  for (const [k, v] of Object.entries(dawn.globals))
    if (!(k in globalThis)) (globalThis as Record<string, unknown>)[k] = v;
  // Mesa's EGL needs a platform when there is no display; surfaceless is the one that works headless.
  const env = (globalThis as { process: { env: Record<string, string | undefined> } }).process.env;
  if (dawnOptions.some((o) => /^backend=opengl/.test(o)) && env.EGL_PLATFORM === undefined)
    env.EGL_PLATFORM = 'surfaceless';
  const gpu = dawn.create(dawnOptions);
  dawnInstances.set(key, gpu);
  return gpu;
}

function setNavigatorGpu(gpu: GPULike): void {
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (g.navigator === undefined) (g as Record<string, unknown>).navigator = { gpu };
  else Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
}

/**
 * Whether Linux can load a Vulkan loader (`libvulkan.so.1`): listed in the dynamic linker's cache or
 * present in an LD_LIBRARY_PATH folder. Dawn prints "Couldn't load Vulkan" on stderr from native code
 * when it is missing, which no JS can silence, so `'auto'` asks this first and skips Dawn quietly.
 * Other platforms (Metal, D3D12) and explicit Dawn backends are not checked.
 */
async function vulkanLoaderPresent(dawnOptions: string[]): Promise<boolean> {
  const proc = (globalThis as { process?: { platform?: string; env?: Record<string, string | undefined> } }).process;
  if (proc?.platform !== 'linux' || dawnOptions.some((o) => o.startsWith('backend=') && o !== 'backend=vulkan'))
    return true;
  const fsName = 'node:fs/promises';
  const fs = (await import(/* @vite-ignore */ fsName)) as typeof import('node:fs/promises');
  const cache = await fs.readFile('/etc/ld.so.cache').catch(() => null);
  if (cache?.includes('libvulkan.so.1')) return true;
  // the folders dlopen searches: LD_LIBRARY_PATH, then (beside the cache) the trusted defaults
  const dirs = [
    ...(proc.env?.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    '/lib',
    '/usr/lib',
    '/lib64',
    '/usr/lib64',
  ];
  for (const dir of dirs) if (await fs.stat(`${dir}/libvulkan.so.1`).catch(() => null)) return true;
  return false;
}

async function probeWebgpu(options: InitBackendOptions, allowSoftware: boolean, auto = false): Promise<Probe> {
  const settings = webgpuSettings(options.webgpu ?? {});
  if (auto && isNode() && !(await vulkanLoaderPresent(settings.dawnOptions)))
    return {
      ok: false,
      reason: 'no Vulkan loader (libvulkan.so.1) is installed, which Dawn needs to reach a GPU on Linux',
      hint:
        "Install your GPU's Vulkan driver and libvulkan1, or ask for webgpu by name to let Dawn try other backends " +
        "(initBackend('webgpu', { webgpu: { dawnOptions: ['backend=opengles'], featureLevel: 'compatibility' } })).",
    };
  const defaults: Record<string, unknown> = {};
  if (settings.featureLevel === 'compatibility') defaults.featureLevel = 'compatibility';
  if (settings.powerPreference) defaults.powerPreference = settings.powerPreference;
  let base: GPULike;
  if (isNode()) {
    const gpu = await nodeGpu(settings.dawnOptions, options);
    if ('ok' in gpu) return gpu;
    base = gpu;
  } else {
    const nav = (globalThis as { navigator?: { gpu?: GPULike } }).navigator;
    if (!nav?.gpu) {
      return {
        ok: false,
        reason: 'navigator.gpu does not exist in this browser',
        hint: 'Use a browser with WebGPU (Chrome or Edge 113+), or serve the page over https or localhost.',
      };
    }
    base = webgpuGpu ?? nav.gpu;
  }
  const gpu = withAdapterDefaults(base, defaults);
  const adapter = await gpu.requestAdapter().catch(() => null);
  const where = isNode()
    ? `Dawn (${settings.dawnOptions.join(' ') || 'default backend'}, featureLevel ${settings.featureLevel})`
    : 'navigator.gpu';
  if (!adapter) {
    return {
      ok: false,
      reason: `${where} returned no adapter`,
      hint: isNode()
        ? 'Install a Vulkan driver for your GPU (and libvulkan1). Without a GPU, a software adapter works through Mesa: ' +
          "apt-get install libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri, then initBackend('webgpu', { webgpu: { dawnOptions: ['backend=opengles'], featureLevel: 'compatibility' } }) " +
          '(or LORA_DAWN_OPTIONS=backend=opengles LORA_WEBGPU_FEATURE_LEVEL=compatibility).'
        : 'Enable WebGPU in the browser (chrome://flags/#enable-unsafe-webgpu in headless or Linux Chrome).',
    };
  }
  const described = describeAdapter(adapter);
  if (described.software && !allowSoftware) {
    return {
      ok: false,
      reason: `the only adapter is a software one (${described.adapter}), slower than wasm`,
      hint: "Ask for it by name (initBackend('webgpu')) or pass webgpu.allowSoftware: true to use it anyway.",
    };
  }
  return {
    ok: true,
    ...described,
    activate: async () => {
      // tfjs-backend-webgpu registers itself at import time only if navigator.gpu already exists.
      setNavigatorGpu(gpu);
      if (webgpuFactory === null && tf.findBackendFactory('webgpu') === null) {
        const mod = await load('@tensorflow/tfjs-backend-webgpu', options);
        if (mod === null) {
          throw new BackendUnavailableError(
            'webgpu',
            '@tensorflow/tfjs-backend-webgpu is not installed',
            `Install it: npm install @tensorflow/tfjs-backend-webgpu@${TFJS}`,
          );
        }
        if (tf.findBackendFactory('webgpu') === null) {
          throw new BackendUnavailableError(
            'webgpu',
            '@tensorflow/tfjs-backend-webgpu was imported before navigator.gpu existed, so it did not register',
            'Do not import @tensorflow/tfjs-backend-webgpu yourself in Node; initBackend imports it after setting navigator.gpu up.',
          );
        }
      }
      webgpuFactory ??= tf.findBackendFactory('webgpu');
      // A webgpu backend made earlier with other settings holds another device: start afresh.
      if (webgpuGpu !== null && webgpuGpu !== gpu && webgpuFactory) {
        tf.removeBackend('webgpu');
        tf.registerBackend('webgpu', webgpuFactory, 3);
      }
      webgpuGpu = gpu;
      await setTfBackend('webgpu');
      // every dispatch then reuses uniform buffers and bind groups (see webgpu-dispatch-cache.ts)
      ensureDispatchCache();
      return undefined;
    },
  };
}

async function probe(
  name: BackendName,
  options: InitBackendOptions,
  allowSoftware: boolean,
  auto = false,
): Promise<Probe> {
  switch (name) {
    case 'cpu':
      return probeCpu(options);
    case 'wasm':
      return probeWasm(options);
    case 'tensorflow':
      return probeTensorflow(options);
    case 'webgpu':
      return probeWebgpu(options, allowSoftware, auto);
  }
}

const ALL: readonly BackendName[] = ['cpu', 'wasm', 'webgpu', 'tensorflow'];

/** What `'auto'` has learnt from its first probe, which decides its order. */
export interface AutoFacts {
  /** The tensorflow backend is present and computes on a CUDA device (tfjs-node-gpu with a GPU). */
  tensorflowGpu?: boolean;
}

/**
 * The order `'auto'` tries backends in, fastest first, from measurements (BENCHMARKS.md, issue 20):
 * in Node, TensorFlow on a CUDA GPU (tfjs-node-gpu), then webgpu on a hardware adapter (on an H200
 * far ahead of any CPU backend), then TensorFlow on the CPU (tfjs-node: half wasm's CPU time on a
 * 135M LoRA step, 2 cores), then wasm, then cpu; in a browser webgpu (hardware), wasm, cpu. `'auto'` skips a
 * software webgpu adapter whatever the order.
 *
 * @example
 * ```ts
 * autoOrder({ tensorflowGpu: false }, 'node'); // ['webgpu', 'tensorflow', 'wasm', 'cpu']
 * ```
 */
export function autoOrder(
  facts: AutoFacts = {},
  platform: 'node' | 'browser' = isNode() ? 'node' : 'browser',
): BackendName[] {
  if (platform === 'browser') return ['webgpu', 'wasm', 'cpu'];
  return facts.tensorflowGpu ? ['tensorflow', 'webgpu', 'wasm', 'cpu'] : ['webgpu', 'tensorflow', 'wasm', 'cpu'];
}

/**
 * `'auto'`'s choice with the probes passed in (tests pass stand-ins): probes tensorflow first in Node
 * (it decides the order), then each backend of {@link autoOrder} until one starts. Each backend is
 * probed at most once. Returns the backend started, or the reasons each one was skipped.
 */
export async function chooseAuto(
  probeOf: (name: BackendName) => Promise<Probe>,
  start: (name: BackendName, p: Extract<Probe, { ok: true }>) => Promise<BackendInfo>,
  platform: 'node' | 'browser',
): Promise<BackendInfo | { skipped: string[] }> {
  const seen = new Map<BackendName, Probe>();
  const get = async (name: BackendName) => {
    let p = seen.get(name);
    if (!p) {
      p = await probeOf(name);
      seen.set(name, p);
    }
    return p;
  };
  let facts: AutoFacts = {};
  if (platform === 'node') {
    const t = await get('tensorflow');
    facts = { tensorflowGpu: t.ok && t.gpu === true };
  }
  const skipped: string[] = [];
  for (const candidate of autoOrder(facts, platform)) {
    const p = await get(candidate);
    if (!p.ok) {
      skipped.push(`${candidate}: ${p.reason}`);
      continue;
    }
    try {
      return await start(candidate, p);
    } catch (e) {
      skipped.push(`${candidate}: ${(e as Error).message}`);
    }
  }
  return { skipped };
}

async function finish(
  name: BackendName,
  p: Extract<Probe, { ok: true }>,
  options: InitBackendOptions,
): Promise<BackendInfo> {
  if (options.quiet !== false) tf.env().set('PROD', true);
  const adapter = (await p.activate()) ?? p.adapter;
  // Gradients are registered whatever the backend: tfjs-core alone registers none.
  await import('./register-gradients');
  current = { name, adapter, software: p.software, platform: isNode() ? 'node' : 'browser' };
  return current;
}

/**
 * Chooses where tensors live, starts that backend, registers gradients, and says what it chose.
 *
 * `'auto'` takes the fastest backend present ({@link autoOrder}): in Node, `tensorflow` when
 * tfjs-node-gpu finds a CUDA GPU, then `webgpu` on a hardware adapter, then `tensorflow` on the CPU
 * (tfjs-node), then `wasm`, then `cpu`; in a browser: `webgpu` on a hardware adapter, then `wasm`,
 * then `cpu`. A backend named explicitly that cannot start throws a
 * {@link BackendUnavailableError} saying what to install or set.
 *
 * @example
 * ```ts
 * import { initBackend } from '@lora/tensor';
 * const info = await initBackend();            // or 'cpu' | 'wasm' | 'webgpu' | 'tensorflow'
 * console.log(`${info.name} on ${info.adapter}${info.software ? ' (software)' : ''}`);
 * ```
 */
export async function initBackend(
  name: BackendName | 'auto' = 'auto',
  options: InitBackendOptions = {},
): Promise<BackendInfo> {
  if (name !== 'auto') {
    if (!ALL.includes(name)) {
      throw new BackendUnavailableError(
        String(name),
        'unknown backend name',
        `Use one of ${ALL.join(', ')} or 'auto'.`,
      );
    }
    const p = await probe(name, options, options.webgpu?.allowSoftware ?? true);
    if (!p.ok) throw new BackendUnavailableError(name, p.reason, p.hint);
    return finish(name, p, options);
  }
  const chosen = await chooseAuto(
    (candidate) => probe(candidate, options, options.webgpu?.allowSoftware ?? false, true),
    (candidate, p) => finish(candidate, p, options),
    isNode() ? 'node' : 'browser',
  );
  if ('name' in chosen) return chosen;
  throw new BackendUnavailableError(
    'auto',
    `no backend could start (${chosen.skipped.join('; ')})`,
    `Install @tensorflow/tfjs-backend-cpu@${TFJS} at least.`,
  );
}

/**
 * Reports which backends can start here, and for those that cannot, why and what to do.
 * Probing imports the backend packages it finds but does not change the active backend.
 *
 * @example
 * ```ts
 * for (const b of await listBackends()) console.log(b.name, b.available ? b.adapter : b.reason);
 * ```
 */
export async function listBackends(options: InitBackendOptions = {}): Promise<BackendAvailability[]> {
  // quiet, as 'auto' probes: a missing Vulkan loader is a reason in the table, not Dawn's stderr noise
  const probes = new Map<BackendName, Probe>();
  const tensorflow = await probe('tensorflow', options, true, true);
  probes.set('tensorflow', tensorflow);
  // the order 'auto' tries them in, then what it never tries here
  const auto = autoOrder({ tensorflowGpu: tensorflow.ok && tensorflow.gpu === true });
  const order = [...auto, ...ALL.filter((n) => !auto.includes(n))];
  const rows: BackendAvailability[] = [];
  for (const name of order) {
    const p = probes.get(name) ?? (await probe(name, options, true, true));
    rows.push(
      p.ok
        ? { name, available: true, adapter: p.adapter, software: p.software }
        : { name, available: false, reason: p.reason, hint: p.hint },
    );
  }
  return rows;
}

/**
 * The backend {@link initBackend} last started, or `null` before the first call.
 *
 * @example
 * ```ts
 * const info = getBackendInfo(); if (info?.name === 'webgpu') console.log(info.adapter);
 * ```
 */
export function getBackendInfo(): BackendInfo | null {
  return current !== null && tf.getBackend() === current.name ? current : null;
}
