/**
 * The GPU training bench of issue 20: a LoRA step of a Llama on the active backend (webgpu by
 * default), for several code paths side by side in one process, with what a profile of each says.
 *
 * For each model (`LORA_GPU_MODELS`, default `123m,10m`) and each variant (`LORA_GPU_VARIANTS`,
 * default every one in VARIANTS below): forward + loss ms, LoRA training step ms (r 16 on all seven
 * linear targets, AdamW on the adapters), GPU dispatches per step, and one `tf.profile`d step
 * summarised by kernel (calls, GPU ms where the adapter has timestamp queries). Before that, the
 * same small LoRA model on the cpu backend and on this one, every variant: loss and gradients compared
 * (max |Δ| / max |cpu|). Then matMul throughput at 1024–8192 for each matmul program.
 *
 * On the H200 (bundled by ../shared/device/pack, with bench/peer_train_gpu.py as the PyTorch peer):
 *   source .device/setup.sh && python3 packages/cli/bench/peer_train_gpu.py > $OUT/peer.json &&
 *   $NODE .device/bundle/train-gpu.mjs
 * Here, on Mesa's software adapter (slow: use the small model and few runs):
 *   LORA_DAWN_OPTIONS=backend=opengles LORA_WEBGPU_FEATURE_LEVEL=compatibility LORA_GPU_MODELS=10m ...
 * Environment: LORA_GPU_RUNS (timed runs, median; default 5), LORA_GPU_BATCH / LORA_GPU_SEQ (override
 * the models' 4 × 512 and 4 × 128), LORA_GPU_PROFILE=0 (no profile), LORA_GPU_PARITY=0,
 * LORA_GPU_MATMUL=0 (no matmul table), `model` (the 123M model's products only) or a list of sizes,
 * LORA_GPU_MM_PROGRAMS (the table's programs, names of MM_PROGRAMS; default all), LORA_GPU_MM_FLOPS (work
 * per timed run of the table, default 2e12, at most 30 products), LORA_GPU_SUBMIT_BATCH (tfjs's
 * WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE, default 15), LORA_GPU_TAG (names the run), OUT (a folder:
 * results-TAG.json is written there), PEER (a peer_train_gpu.py JSON output to print side by side;
 * default $OUT/peer.json).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { AdamW, manualSeed, withoutInit } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { type BackendName, initBackend } from '@lora/tensor';
import { type KernelOptions, configureKernels, countDispatches, dispatchCacheStats } from '@lora/kernels';
import { BATCH, BENCH_CONFIG, SEQ } from '../../models/bench/cases';

const env = process.env;
const RUNS = Number(env.LORA_GPU_RUNS ?? 5);
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/** The models of the issue: the 123M Llama (4 × 512 tokens) and the ~10M one of `@lora/models`' bench (4 × 128). */
const MODELS: Record<string, { config: Record<string, unknown>; batch: number; seq: number }> = {
  '123m': {
    config: {
      model_type: 'llama',
      vocab_size: 32000,
      hidden_size: 1024,
      intermediate_size: 2816,
      num_hidden_layers: 8,
      num_attention_heads: 16,
      num_key_value_heads: 4,
      max_position_embeddings: 2048,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: true,
    },
    batch: 4,
    seq: 512,
  },
  // @lora/models' bench model (hidden 256, 8 layers, 8 / 4 heads, vocab 8192)
  '10m': { config: BENCH_CONFIG, batch: BATCH, seq: SEQ },
  // the parity case: small enough for the cpu backend
  tiny: {
    config: {
      model_type: 'llama',
      vocab_size: 96,
      hidden_size: 64,
      intermediate_size: 112,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 64,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: true,
    },
    batch: 2,
    seq: 24,
  },
};

/** Round 3's matmul choices, whatever the defaults are now. */
const R3_MATMUL: Partial<KernelOptions> = {
  matmul: 'tiled',
  largeTileGroups: 128,
  mediumTile: 'none',
  matmulWarpLayout: false,
  matmulDoubleBuffer: false,
  matmulVec4Store: false,
  matmulDepth: 16,
  matmulSplitK: false,
  thinTiles: false,
  thinRows: false,
};
const R4_FEATURES: Partial<KernelOptions> = { matmulWarpLayout: true, matmulDoubleBuffer: true, matmulVec4Store: true };

/**
 * The matmul programs of the throughput table (`LORA_GPU_MM_PROGRAMS`, default all): tfjs's, a tile
 * forced with round 3's program or with some of round 4's variations, or a tile policy.
 */
const MM_PROGRAMS: Record<string, Partial<KernelOptions>> = {
  tfjs: { matmul: 'tfjs' },
  'tiled-64': { ...R3_MATMUL, matmul: 'tiled-64' },
  'tiled-128': { ...R3_MATMUL, matmul: 'tiled-128' },
  '128+warp': { ...R3_MATMUL, matmul: 'tiled-128', matmulWarpLayout: true },
  '128+double': { ...R3_MATMUL, matmul: 'tiled-128', matmulDoubleBuffer: true },
  '128+v4out': { ...R3_MATMUL, matmul: 'tiled-128', matmulVec4Store: true },
  '128+all': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-128' },
  '128x64+all': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-128x64' },
  '64x128+all': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-64x128' },
  '64+all': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-64' },
  '64+all+split': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-64', matmulSplitK: true },
  '128+k32': { ...R3_MATMUL, matmul: 'tiled-128', matmulDepth: 32 },
  '128+warp+k32': { ...R3_MATMUL, matmul: 'tiled-128', matmulWarpLayout: true, matmulDepth: 32 },
  '128+warp+double': { ...R3_MATMUL, matmul: 'tiled-128', matmulWarpLayout: true, matmulDoubleBuffer: true },
  '128+all+k32': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-128', matmulDepth: 32 },
  '128x64+all+k32': { ...R3_MATMUL, ...R4_FEATURES, matmul: 'tiled-128x64', matmulDepth: 32 },
  'r3 policy': R3_MATMUL,
  'r3 policy+thinrows': { ...R3_MATMUL, thinRows: true },
  'k32 policy+thinrows': { ...R3_MATMUL, matmulDepth: 32, thinRows: true },
  // round 5: 32-deep slabs from K = 2048 on, 16-deep below
  'auto policy+thinrows': { ...R3_MATMUL, matmulDepth: 'auto', thinRows: true },
  'r4 policy': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '128x64', largeTileGroups: 256 },
  'r4 policy+split': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '128x64', largeTileGroups: 256, matmulSplitK: true },
  'r4 policy+split+thin': {
    ...R3_MATMUL,
    ...R4_FEATURES,
    mediumTile: '128x64',
    largeTileGroups: 256,
    matmulSplitK: true,
    thinTiles: true,
  },
  'r4 policy+k32': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '128x64', largeTileGroups: 256, matmulDepth: 32 },
};

/** Code paths compared: each is a set of `@lora/kernels` options. */
const VARIANTS: Record<string, Partial<KernelOptions>> = {
  // what main had before issue 20: explicit transposes, composite ops, tfjs's dispatch path
  baseline: { transposeFlags: false, fused: false, matmul: 'tfjs', dispatchCache: false, fusedLora: false },
  flags: { transposeFlags: true, fused: false, matmul: 'tfjs', dispatchCache: false, fusedLora: false },
  fused: { transposeFlags: true, fused: true, matmul: 'tfjs', dispatchCache: false, fusedLora: false },
  // the defaults of rounds 1–2
  'fused+cache': { transposeFlags: true, fused: true, matmul: 'tfjs', dispatchCache: true, fusedLora: false },
  'fused+cache+tiled': { transposeFlags: true, fused: true, matmul: 'tiled', dispatchCache: true, fusedLora: false },
  // round 3: LoRA's B product, scale and add in one dispatch (addLowRank)
  'fused+cache+lora': { transposeFlags: true, fused: true, matmul: 'tfjs', dispatchCache: true, fusedLora: true },
  // the defaults now (tiled matmul by shape, fused LoRA)
  default: {},
  // the same with 64² tiles for products under 256 workgroups of 128² (q/o, down, k/v of the 123M model)
  'default+wide64': { largeTileGroups: 256 },
  // round 3's default spelled out (whatever the defaults become)
  r3: R3_MATMUL,
  // round 4: the tiled program's variations, one at a time and together, then with the 128×64 tile
  'r4-warp': { ...R3_MATMUL, matmulWarpLayout: true },
  'r4-double': { ...R3_MATMUL, matmulDoubleBuffer: true },
  'r4-all': { ...R3_MATMUL, ...R4_FEATURES },
  'r4-k32': { ...R3_MATMUL, matmulDepth: 32 },
  'r3+thinrows': { ...R3_MATMUL, thinRows: true },
  // round 5: the slab depth by K (32 from K = 2048 on: down's x·Wᵀ, dy·W of gate/up and of the LM head)
  'r5-auto': { ...R3_MATMUL, matmulDepth: 'auto', thinRows: true },
  'r5-auto+warp': { ...R3_MATMUL, matmulDepth: 'auto', thinRows: true, matmulWarpLayout: true },
  'r4-k32+thinrows': { ...R3_MATMUL, matmulDepth: 32, thinRows: true },
  'r4-warp+k32+thinrows': { ...R3_MATMUL, matmulWarpLayout: true, matmulDepth: 32, thinRows: true },
  'r4-warp+k32': { ...R3_MATMUL, matmulWarpLayout: true, matmulDepth: 32 },
  'r4-warp+double': { ...R3_MATMUL, matmulWarpLayout: true, matmulDoubleBuffer: true },
  'r4-medium': { ...R3_MATMUL, mediumTile: '128x64', largeTileGroups: 256 },
  'r4-all+medium': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '128x64', largeTileGroups: 256 },
  'r4-all+medium64x128': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '64x128', largeTileGroups: 256 },
  'r4-all+medium+split': {
    ...R3_MATMUL,
    ...R4_FEATURES,
    mediumTile: '128x64',
    largeTileGroups: 256,
    matmulSplitK: true,
  },
  'r4-all+medium+split+thin': {
    ...R3_MATMUL,
    ...R4_FEATURES,
    mediumTile: '128x64',
    largeTileGroups: 256,
    matmulSplitK: true,
    thinTiles: true,
  },
  'r4-all+medium+k32': { ...R3_MATMUL, ...R4_FEATURES, mediumTile: '128x64', largeTileGroups: 256, matmulDepth: 32 },
};

const list = (s: string | undefined, all: string[]) => (s ? s.split(',').map((x) => x.trim()) : all);
const variantNames = list(env.LORA_GPU_VARIANTS, Object.keys(VARIANTS));
const modelNames = env.LORA_GPU_MODELS === 'none' ? [] : list(env.LORA_GPU_MODELS, ['123m', '10m']);
for (const v of variantNames) if (!VARIANTS[v]) throw new Error(`unknown variant '${v}': ${Object.keys(VARIANTS)}`);
for (const m of modelNames) if (!MODELS[m]) throw new Error(`unknown model '${m}': ${Object.keys(MODELS)}`);
const mmProgramNames = list(env.LORA_GPU_MM_PROGRAMS, Object.keys(MM_PROGRAMS));
if (mmProgramNames[0] !== 'tfjs') mmProgramNames.unshift('tfjs'); // the reference for the differences
for (const p of mmProgramNames)
  if (!MM_PROGRAMS[p]) throw new Error(`unknown matmul program '${p}': ${Object.keys(MM_PROGRAMS)}`);

const backendName = (env.LORA_BENCH_BACKEND ?? 'webgpu') as BackendName;
const importers = {
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
};

function median(t: number[]): number {
  return [...t].sort((a, b) => a - b)[Math.floor(t.length / 2)] as number;
}

/**
 * A Llama with LoRA on all seven targets, built fast: no seeded host init of the base (zeros, then
 * device-side values from a small random pool), LoRA's own init for A (kaiming, on the host; 2.3M
 * values for the 123M model) and B (zeros, then small values so that every gradient is non-zero).
 */
function buildLoraModel(name: string, seeded: boolean) {
  const base0 = MODELS[name] as (typeof MODELS)[string];
  const spec =
    name === 'tiny'
      ? base0
      : { ...base0, batch: Number(env.LORA_GPU_BATCH ?? base0.batch), seq: Number(env.LORA_GPU_SEQ ?? base0.seq) };
  const config = parseLlamaConfig(spec.config);
  manualSeed(0);
  const model = seeded
    ? new LlamaForCausalLM(config)
    : withoutInit(() => new LlamaForCausalLM(config, { init: false }));
  if (!seeded) {
    // a pool of 2^20 normal values, sliced and tiled into every weight (timing does not need independent draws)
    const pool = tf.randomNormal([1 << 20], 0, 0.02, 'float32', 1);
    let offset = 0;
    for (const [n, p] of model.namedParameters()) {
      if (n.endsWith('norm.weight')) continue;
      const size = p.size;
      const start = offset % ((1 << 20) - Math.min(size, 1 << 19));
      offset += 7919;
      const take = Math.min(size, 1 << 19);
      tf.tidy(() => {
        const chunk = tf.slice(pool, [start], [take]);
        const reps = Math.ceil(size / take);
        const flat = reps > 1 ? tf.slice(tf.tile(chunk, [reps]), [0], [size]) : chunk;
        p.assign(tf.reshape(flat, p.shape));
      });
    }
    pool.dispose();
  }
  const peft = getPeftModel(model, { r: 16, loraAlpha: 32, targetModules: TARGETS });
  // B starts at zero in LoRA; small values make A's gradients non-zero as after a few steps
  for (const [n, p] of peft.namedParameters())
    if (n.includes('lora_B')) p.assign(tf.tidy(() => tf.randomNormal(p.shape, 0, 0.01, 'float32', 2)));
  const ids = tf.tidy(
    () =>
      tf.cast(
        tf.mul(tf.randomUniform([spec.batch, spec.seq], 0, 1, 'float32', 3), config.vocabSize - 1),
        'int32',
      ) as tf.Tensor2D,
  );
  return { peft, base: model, ids, config, spec };
}

type Built = ReturnType<typeof buildLoraModel>;

function lossOf(b: Built): tf.Scalar {
  return b.base.forward(b.ids, { labels: b.ids }).loss as tf.Scalar;
}

async function forwardOnce(b: Built): Promise<void> {
  const loss = tf.tidy(() => lossOf(b));
  await loss.data();
  loss.dispose();
}

/** One step; returns the milliseconds spent before the readback was awaited (recording and submitting the work). */
async function stepOnce(b: Built, opt: AdamW): Promise<number> {
  const t0 = performance.now();
  const { value, grads } = tf.variableGrads(() => lossOf(b), b.peft.trainableParameters());
  opt.step(grads);
  const host = performance.now() - t0;
  await value.data();
  tf.dispose([value, ...Object.values(grads)]);
  return host;
}

interface KernelRow {
  name: string;
  calls: number;
  gpuMs: number;
}

async function profileStep(b: Built, opt: AdamW): Promise<{ kernels: KernelRow[]; totalGpuMs: number }> {
  return summarise(
    await tf.profile(async () => {
      const { value, grads } = tf.variableGrads(() => lossOf(b), b.peft.trainableParameters());
      opt.step(grads);
      await value.data();
      tf.dispose([value, ...Object.values(grads)]);
    }),
  );
}

/** The forward + loss alone, profiled the same way: which kernels the forward's dispatches are. */
async function profileForward(b: Built): Promise<{ kernels: KernelRow[]; totalGpuMs: number }> {
  return summarise(await tf.profile(() => forwardOnce(b)));
}

async function summarise(
  info: Awaited<ReturnType<typeof tf.profile>>,
): Promise<{ kernels: KernelRow[]; totalGpuMs: number }> {
  const rows = new Map<string, KernelRow>();
  for (const k of info.kernels) {
    const ms = await Promise.resolve(k.kernelTimeMs as number | { error: string });
    const row = rows.get(k.name) ?? { name: k.name, calls: 0, gpuMs: 0 };
    row.calls++;
    row.gpuMs += typeof ms === 'number' ? ms : 0;
    rows.set(k.name, row);
  }
  const kernels = [...rows.values()].sort((a, c) => c.gpuMs - a.gpuMs || c.calls - a.calls);
  return { kernels, totalGpuMs: kernels.reduce((s, r) => s + r.gpuMs, 0) };
}

let onVariantDone: (r: VariantResult) => void = () => undefined;

interface VariantResult {
  model: string;
  variant: string;
  forwardMs: number;
  stepMs: number;
  /** The step's time until its readback was awaited: JavaScript recording and submitting the work. */
  stepHostMs: number;
  /** CPU time of the process (all threads) during the step: host work, whatever else shares the machine. */
  stepCpuMs: number;
  firstStepMs: number;
  dispatchesForward: number;
  dispatchesStep: number;
  tensorsLeaked: number;
  /** Share of dispatches in the timed runs whose bind group came from the cache (null: cache off). */
  bindGroupHitRate: number | null;
  profile?: { kernels: KernelRow[]; totalGpuMs: number };
  forwardProfile?: { kernels: KernelRow[]; totalGpuMs: number };
}

async function benchModel(name: string): Promise<VariantResult[]> {
  const t0 = performance.now();
  const b = buildLoraModel(name, false);
  await forwardOnce(b);
  console.error(`[${name}] built in ${(performance.now() - t0).toFixed(0)} ms`);
  const out: VariantResult[] = [];
  for (const variant of variantNames) {
    configureKernels(VARIANTS[variant] as Partial<KernelOptions>);
    const opt = new AdamW(b.peft.trainableParameters(), { lr: 1e-4, weightDecay: 0.01 });
    const tFirst = performance.now();
    await stepOnce(b, opt); // compiles this variant's pipelines
    const firstStepMs = performance.now() - tFirst;
    await stepOnce(b, opt);
    const before = tf.memory().numTensors;
    const cache0 = { ...dispatchCacheStats };
    const fwd: number[] = [];
    const stp: number[] = [];
    const host: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      let t = performance.now();
      await forwardOnce(b);
      fwd.push(performance.now() - t);
      t = performance.now();
      const c = process.cpuUsage();
      host.push(await stepOnce(b, opt));
      const used = process.cpuUsage(c);
      cpu.push((used.user + used.system) / 1000);
      stp.push(performance.now() - t);
    }
    const leaked = tf.memory().numTensors - before;
    const hits = dispatchCacheStats.bindGroupHits - cache0.bindGroupHits;
    const misses = dispatchCacheStats.bindGroupMisses - cache0.bindGroupMisses;
    const dispatchesForward = await countDispatches(() => forwardOnce(b));
    const dispatchesStep = await countDispatches(() => stepOnce(b, opt));
    const r: VariantResult = {
      model: name,
      variant,
      forwardMs: median(fwd),
      stepMs: median(stp),
      stepHostMs: median(host),
      stepCpuMs: median(cpu),
      firstStepMs,
      dispatchesForward,
      dispatchesStep,
      tensorsLeaked: leaked,
      bindGroupHitRate: hits + misses > 0 ? hits / (hits + misses) : null,
    };
    if (env.LORA_GPU_PROFILE !== '0') {
      r.profile = await profileStep(b, opt);
      r.forwardProfile = await profileForward(b);
    }
    opt.dispose();
    out.push(r);
    onVariantDone(r);
    console.error(
      `[${name}] ${variant}: forward ${r.forwardMs.toFixed(1)} ms, step ${r.stepMs.toFixed(1)} ms, ${dispatchesStep} dispatches/step, bind groups cached ${r.bindGroupHitRate === null ? '–' : `${(100 * r.bindGroupHitRate).toFixed(0)}%`}, ${leaked} tensors left`,
    );
  }
  tf.dispose([b.ids]);
  b.peft.dispose();
  return out;
}

/** Loss and LoRA gradients of the tiny model on the cpu backend, then on the benched one, per variant. */
async function parity(): Promise<{ variant: string; lossRel: number; gradRel: number }[]> {
  await initBackend('cpu', { importers });
  const b = buildLoraModel('tiny', true);
  const grab = async () => {
    const { value, grads } = tf.variableGrads(() => lossOf(b), b.peft.trainableParameters());
    const loss = (await value.data())[0] as number;
    const g: Record<string, Float32Array> = {};
    for (const [k, t] of Object.entries(grads)) g[k] = (await t.data()) as Float32Array;
    tf.dispose([value, ...Object.values(grads)]);
    return { loss, g };
  };
  const ref = await grab();
  await initBackend(backendName, { importers });
  const rows = [];
  // the tiny model's products are too small for 'tiled' to take: one more run forces the 64² tile on all
  const forced: Record<string, Partial<KernelOptions>> = {
    'default, every product tiled-64 (LoRA Linears through linearLowRank)': { matmul: 'tiled-64' },
    'round 4 variations, every product tiled-128x64': { ...R4_FEATURES, matmul: 'tiled-128x64' },
    'split-K, every product tiled-64': { matmul: 'tiled-64', matmulSplitK: true },
  };
  for (const variant of [...variantNames, ...Object.keys(forced)]) {
    configureKernels((VARIANTS[variant] ?? forced[variant]) as Partial<KernelOptions>);
    const got = await grab();
    let num = 0;
    let den = 0;
    for (const [k, r] of Object.entries(ref.g)) {
      const o = got.g[k] as Float32Array;
      for (let i = 0; i < r.length; i++) {
        num = Math.max(num, Math.abs((o[i] as number) - (r[i] as number)));
        den = Math.max(den, Math.abs(r[i] as number));
      }
    }
    rows.push({ variant, lossRel: Math.abs(got.loss - ref.loss) / Math.abs(ref.loss), gradRel: num / den });
  }
  b.peft.dispose();
  b.ids.dispose();
  return rows;
}

/** A product timed by {@link matmulTable}: op(A)·op(B) with A, B of these shapes. */
interface MatmulCase {
  label: string;
  a: number[];
  b: number[];
  transposeA: boolean;
  transposeB: boolean;
}

/**
 * The products of the 123M model's step (4 × 512 tokens): x·Wᵀ of the projections and the
 * vocabulary head, the input gradients dy·W, q·kᵀ and p·v per (batch, kv head); then squares.
 */
export const MATMUL_CASES: MatmulCase[] = [
  { label: 'x·Wᵀ q/o 2048×1024·(1024×1024)ᵀ', a: [2048, 1024], b: [1024, 1024], transposeA: false, transposeB: true },
  { label: 'x·Wᵀ k/v 2048×1024·(256×1024)ᵀ', a: [2048, 1024], b: [256, 1024], transposeA: false, transposeB: true },
  {
    label: 'x·Wᵀ gate/up 2048×1024·(2816×1024)ᵀ',
    a: [2048, 1024],
    b: [2816, 1024],
    transposeA: false,
    transposeB: true,
  },
  { label: 'x·Wᵀ down 2048×2816·(1024×2816)ᵀ', a: [2048, 2816], b: [1024, 2816], transposeA: false, transposeB: true },
  {
    label: 'x·Wᵀ lm_head 2048×1024·(32000×1024)ᵀ',
    a: [2048, 1024],
    b: [32000, 1024],
    transposeA: false,
    transposeB: true,
  },
  { label: 'dy·W gate/up 2048×2816·2816×1024', a: [2048, 2816], b: [2816, 1024], transposeA: false, transposeB: false },
  {
    label: 'dy·W lm_head 2048×32000·32000×1024',
    a: [2048, 32000],
    b: [32000, 1024],
    transposeA: false,
    transposeB: false,
  },
  { label: 'q·kᵀ 16×(2048×64)·(512×64)ᵀ', a: [16, 2048, 64], b: [16, 512, 64], transposeA: false, transposeB: true },
  { label: 'p·v 16×(2048×512)·(512×64)', a: [16, 2048, 512], b: [16, 512, 64], transposeA: false, transposeB: false },
  // LoRA's thin products (r 16): x·Aᵀ in the forward, then dy·B, dyᵀ·h and dhᵀ·x in the backward
  { label: 'x·Aᵀ 2048×1024·(16×1024)ᵀ', a: [2048, 1024], b: [16, 1024], transposeA: false, transposeB: true },
  { label: 'x·Aᵀ down 2048×2816·(16×2816)ᵀ', a: [2048, 2816], b: [16, 2816], transposeA: false, transposeB: true },
  { label: 'dy·B 2048×1024·1024×16', a: [2048, 1024], b: [1024, 16], transposeA: false, transposeB: false },
  { label: 'dyᵀ·h (2048×1024)ᵀ·2048×16', a: [2048, 1024], b: [2048, 16], transposeA: true, transposeB: false },
  { label: 'dhᵀ·x (2048×16)ᵀ·2048×1024', a: [2048, 16], b: [2048, 1024], transposeA: true, transposeB: false },
];
const squares = (sizes: number[]): MatmulCase[] =>
  sizes.map((n) => ({ label: `${n}² square`, a: [n, n], b: [n, n], transposeA: false, transposeB: false }));

function flopsOf(c: MatmulCase): number {
  const batch = c.a.length === 3 ? (c.a[0] as number) : 1;
  const m = c.transposeA ? (c.a.at(-1) as number) : (c.a.at(-2) as number);
  const k = c.transposeA ? (c.a.at(-2) as number) : (c.a.at(-1) as number);
  const n = c.transposeB ? (c.b.at(-2) as number) : (c.b.at(-1) as number);
  return 2 * batch * m * n * k;
}

/**
 * float32 matMul throughput (TFLOP/s) for each program, pipelined: `reps` products then a one-element
 * readback that waits for them (the product itself is not read back). Each program's result is
 * compared with tfjs's (max |Δ| / max |tfjs|) where it is small enough to read back.
 */
async function matmulTable(
  cases: MatmulCase[],
  rows: { label: string; program: string; tflops: number; relErr: number | null; gpuUs: number }[] = [],
  onCase: () => void = () => undefined,
): Promise<{ label: string; program: string; tflops: number; relErr: number | null; gpuUs: number }[]> {
  for (const c of cases) {
    const a = tf.randomNormal(c.a, 0, 1, 'float32', 4);
    const b = tf.randomNormal(c.b, 0, 1, 'float32', 5);
    const flops = flopsOf(c);
    const reps = Math.max(2, Math.min(30, Math.round(Number(env.LORA_GPU_MM_FLOPS ?? 2e12) / flops)));
    let reference: Float32Array | null = null;
    for (const program of mmProgramNames) {
      configureKernels(MM_PROGRAMS[program] as Partial<KernelOptions>);
      const product = () => tf.matMul(a, b, c.transposeA, c.transposeB);
      const run = async () => {
        let last: tf.Tensor | null = null;
        for (let i = 0; i < reps; i++) {
          last?.dispose();
          last = product();
        }
        const probe = tf.tidy(() => tf.slice(tf.reshape(last as tf.Tensor, [-1]), [0], [1]));
        await probe.data();
        tf.dispose([probe, last as tf.Tensor]);
      };
      await run();
      const t: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        await run();
        t.push(performance.now() - t0);
      }
      let relErr: number | null = null;
      const size = flops / 2 / (c.transposeA ? (c.a.at(-2) as number) : (c.a.at(-1) as number));
      if (size <= 4 << 20) {
        const y = product();
        const values = (await y.data()) as Float32Array;
        y.dispose();
        if (program === 'tfjs') reference = values;
        else if (reference) {
          let num = 0;
          let den = 0;
          for (let i = 0; i < values.length; i++) {
            num = Math.max(num, Math.abs((values[i] as number) - (reference[i] as number)));
            den = Math.max(den, Math.abs(reference[i] as number));
          }
          relErr = num / den;
        }
      }
      // GPU time of one product from the adapter's timestamps (what a forward pays for it, host aside):
      // Dawn quantizes timestamps to 65.5 µs, so each profile spans `PROFILED` products and averages them
      const gpu: number[] = [];
      for (let i = 0; i < 3; i++) {
        const info = await tf.profile(() => {
          for (let j = 0; j < PROFILED; j++) tf.dispose(product());
        });
        let ms = 0;
        for (const k of info.kernels) {
          const v = await Promise.resolve(k.kernelTimeMs as number | { error: string });
          if (typeof v === 'number') ms += v;
        }
        gpu.push(ms / PROFILED);
      }
      rows.push({
        label: c.label,
        program,
        tflops: (flops * reps) / (median(t) / 1000) / 1e12,
        relErr,
        gpuUs: 1000 * median(gpu),
      });
    }
    tf.dispose([a, b]);
    onCase();
  }
  configureKernels({});
  return rows;
}

const TAG = env.LORA_GPU_TAG ?? 'default';
const PROFILED = Number(env.LORA_GPU_MM_PROFILED ?? 10);
if (env.LORA_GPU_SUBMIT_BATCH) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', Number(env.LORA_GPU_SUBMIT_BATCH));
const results: Record<string, unknown> = {
  tag: TAG,
  date: new Date().toISOString(),
  node: process.version,
  dawnOptions: env.LORA_DAWN_OPTIONS ?? '',
};
if (env.LORA_GPU_PARITY !== '0') results.parity = await parity();
const info = await initBackend(backendName, { importers });
results.backend = info;
results.submitBatch = tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE');
console.error(`benchmarking on ${info.name} (${info.adapter})`);
const benches: VariantResult[] = [];
results.benches = benches;
// written after every variant, so that a run cut short by its time limit still leaves what it measured
const save = () => {
  if (env.OUT) writeFileSync(join(env.OUT, `results-${TAG}.json`), JSON.stringify(results, null, 1));
};
onVariantDone = (r) => {
  benches.push(r);
  save();
};
for (const m of modelNames) await benchModel(m);
// LORA_GPU_MATMUL: 0 for none, 'model' for the 123M model's products only, 'squares' for the squares
// only, or a list of square sizes
const mm = env.LORA_GPU_MATMUL;
const mmCases =
  mm === '0'
    ? []
    : mm === undefined
      ? [...MATMUL_CASES, ...squares([1024, 2048, 4096, 8192])]
      : mm === 'model'
        ? MATMUL_CASES
        : squares(list(mm === 'squares' ? undefined : mm, ['1024', '2048', '4096', '8192']).map(Number));
if (mmCases.length) {
  // kept as it grows: a run stopped by its time limit still leaves the cases it measured
  const rows: Awaited<ReturnType<typeof matmulTable>> = [];
  results.matmul = rows;
  await matmulTable(mmCases, rows, save);
  save();
}
configureKernels({});

const peerPath = env.PEER ?? (env.OUT ? join(env.OUT, 'peer.json') : '');
const peer = peerPath && existsSync(peerPath) ? JSON.parse(readFileSync(peerPath, 'utf8')) : null;
save();

// the tables
console.log(
  `\n[${TAG}] ${results.date}, Node ${process.version}, ${info.name} (${info.adapter}), Dawn options '${results.dawnOptions}', submit every ${results.submitBatch} dispatches`,
);
if (results.parity) {
  console.log('\nparity with the cpu backend (tiny LoRA Llama): max |Δ| / max |cpu|\n');
  console.log('| variant | loss | LoRA gradients |\n| --- | --- | --- |');
  for (const p of results.parity as { variant: string; lossRel: number; gradRel: number }[])
    console.log(`| ${p.variant} | ${p.lossRel.toExponential(1)} | ${p.gradRel.toExponential(1)} |`);
}
console.log(
  '\n| model | variant | forward + loss ms | × peer | LoRA step ms | × peer | of which recording (host) ms | process CPU ms per step | dispatches fwd / step | bind groups cached | first step ms | GPU ms in profile |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
const peerOf = (m: string) => peer?.[m] as { forwardMs: number; stepMs: number } | undefined;
const ratio = (ours: number, theirs: number | undefined) => (theirs ? `${(ours / theirs).toFixed(1)}×` : '–');
for (const r of benches) {
  const p = peerOf(r.model);
  const hit = r.bindGroupHitRate === null ? '–' : `${(100 * r.bindGroupHitRate).toFixed(0)}%`;
  console.log(
    `| ${r.model} | ${r.variant} | ${r.forwardMs.toFixed(1)} | ${ratio(r.forwardMs, p?.forwardMs)} | ${r.stepMs.toFixed(1)} | ${ratio(r.stepMs, p?.stepMs)} | ${r.stepHostMs.toFixed(1)} | ${r.stepCpuMs.toFixed(1)} | ${r.dispatchesForward} / ${r.dispatchesStep} | ${hit} | ${r.firstStepMs.toFixed(0)} | ${r.profile ? r.profile.totalGpuMs.toFixed(1) : '–'} |`,
  );
}
for (const m of modelNames) {
  const p = peerOf(m);
  if (p)
    console.log(
      `| ${m} | PEFT ${peer.peft} / PyTorch ${peer.torch} ${peer.device} | ${p.forwardMs.toFixed(1)} | 1× | ${p.stepMs.toFixed(1)} | 1× | | | | | | |`,
    );
}
for (const r of benches) {
  if (!r.profile) continue;
  console.log(`\nprofile, ${r.model} ${r.variant}: top kernels by GPU time (then calls)\n`);
  console.log('| kernel | calls | GPU ms |\n| --- | --- | --- |');
  for (const k of r.profile.kernels.slice(0, 14)) console.log(`| ${k.name} | ${k.calls} | ${k.gpuMs.toFixed(2)} |`);
  if (!r.forwardProfile) continue;
  console.log(
    `\nforward + loss, ${r.model} ${r.variant}: every kernel (engine kernels: Reshape and the like dispatch nothing), GPU ${r.forwardProfile.totalGpuMs.toFixed(1)} ms\n`,
  );
  console.log('| kernel | calls | GPU ms |\n| --- | --- | --- |');
  for (const k of r.forwardProfile.kernels) console.log(`| ${k.name} | ${k.calls} | ${k.gpuMs.toFixed(2)} |`);
}
if (results.matmul) {
  console.log("\nfloat32 matMul, TFLOP/s (pipelined), and the difference from tfjs's result\n");
  const rows = results.matmul as {
    label: string;
    program: string;
    tflops: number;
    relErr: number | null;
    gpuUs: number;
  }[];
  const programs = [...new Set(rows.map((r) => r.program))];
  console.log(`| product | ${programs.join(' | ')} | PyTorch (TF32 off) | max rel. Δ from tfjs (worst program) |`);
  console.log(`| --- | ${programs.map(() => '---').join(' | ')} | --- | --- |`);
  for (const label of [...new Set(rows.map((r) => r.label))]) {
    const of = (p: string) => rows.find((r) => r.label === label && r.program === p);
    const torch = (peer?.matmul ?? []).find((r: { label: string }) => r.label === label)?.tflops;
    const errs = rows.filter((r) => r.label === label && r.relErr !== null).map((r) => r.relErr as number);
    console.log(
      `| ${label} | ${programs.map((p) => of(p)?.tflops.toFixed(2) ?? '–').join(' | ')} | ${torch === undefined ? '–' : torch.toFixed(2)} | ${errs.length ? Math.max(...errs).toExponential(1) : '–'} |`,
    );
  }
  console.log(
    `\nGPU µs of one product (tf.profile's timestamps over ${PROFILED} products, averaged; median of 3), each program\n`,
  );
  console.log(`| product | ${programs.join(' | ')} |`);
  console.log(`| --- | ${programs.map(() => '---').join(' | ')} |`);
  for (const label of [...new Set(rows.map((r) => r.label))]) {
    const of = (p: string) => rows.find((r) => r.label === label && r.program === p);
    console.log(`| ${label} | ${programs.map((p) => of(p)?.gpuUs.toFixed(1) ?? '–').join(' | ')} |`);
  }
}
