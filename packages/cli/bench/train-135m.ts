/**
 * `npm run bench:train -w @lora/cli` (also the last part of `npm run bench`): LoRA training of a
 * SmolLM-135M-shaped Llama (random weights: hidden 576, 30 layers, 9 heads / 3 kv heads,
 * intermediate 1536, vocab 49152, tied), r 8 on q_proj and v_proj, AdamW, batch 1, against
 * PyTorch CPU (transformers + PEFT, the same shapes) in the same run.
 *
 * Every configuration runs in a fresh child process, so that its peak memory (VmHWM, and on wasm
 * the heap's high-water mark) is its own. Rows: sequence 128, 512 and 2048 on wasm and tensorflow
 * (when installed), cpu at 128 (longer is impractically slow there), with and without gradient
 * checkpointing, and with gradients for every weight (the frozen ones too, as tfjs computed them
 * before) for the memory that adapter-only gradients save, and wasm's threaded build (2 threads,
 * through bench-only shims: see wasm-threads-shim.ts); then a soak (default 200 steps at 512 on
 * wasm) with memory sampled every 10 steps.
 *
 * Env: LORA_BENCH_ONLY (comma list of `steps`, `soak`; default both), LORA_BENCH_TRAIN (comma list of
 * `backend:seq[:ckpt|:all]` cases replacing the default ones), LORA_BENCH_SOAK (`backend:seq:steps`),
 * LORA_BENCH_RUNS (timed steps per row; default 3, 2 at 2048, 1 on cpu), PYTHON (the peer's interpreter;
 * default .venv-oracle in this checkout or in the main worktree), TORCH_THREADS (default 2).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { AdamW, gradientsFor, manualSeed, train, variableGrads } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { type BackendName, initBackend, listBackends, memoryUsage } from '@lora/tensor';
import { SMOLLM_135M } from '../../models/bench/cases';

const mib = (bytes: number) => bytes / 2 ** 20;
const vmHwmMiB = () => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]) / 1024;

/** A backend, or `wasm-threads`: the wasm backend's threaded build with 2 threads, through bench-only shims. */
type BenchBackend = BackendName | 'wasm-threads';

interface Case {
  backend: BenchBackend;
  seq: number;
  /** ckpt: gradient checkpointing; all: gradients for every weight (frozen ones too), the adapters' applied */
  variant: 'plain' | 'ckpt' | 'all';
}

interface StepResult {
  backend: string;
  adapter: string;
  seq: number;
  variant: Case['variant'];
  stepMs: number;
  cpuMs: number;
  times: number[];
  losses: number[];
  peakRssMiB: number;
  wasmHeapMiB?: number;
  error?: string;
}

async function build(backend: BenchBackend, variant: Case['variant']) {
  let info: { name: string; adapter: string };
  if (backend === 'wasm-threads') {
    const { startThreadedWasm } = await import('./wasm-threads-shim');
    const threads = await startThreadedWasm(2);
    await import('@lora/tensor/register-gradients');
    info = { name: 'wasm', adapter: `WebAssembly SIMD, ${threads} threads (threaded build, bench-only shims)` };
  } else info = await initBackend(backend);
  manualSeed(0);
  const model = new LlamaForCausalLM(parseLlamaConfig(SMOLLM_135M), { gradientCheckpointing: variant === 'ckpt' });
  const peft = getPeftModel(model, { r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'] });
  const adapters = peft.trainableParameters();
  const opt = new AdamW(adapters, { lr: 1e-4 });
  return { info, model, peft, adapters, opt };
}

/** Child: `--steps backend seq variant runs`: one warm-up step, then `runs` timed ones. */
async function childSteps(c: Case, runs: number): Promise<StepResult> {
  const { info, model, adapters, opt } = await build(c.backend, c.variant);
  const ids = tf.tidy(() =>
    tf.cast(tf.mul(tf.randomUniform([1, c.seq], 0, 1, 'float32', 1), 49151), 'int32'),
  ) as tf.Tensor2D;
  const loss = () => model.forward(ids, { labels: ids, returnLogits: false }).loss;
  const step = async () => {
    // 'all': gradients of every parameter, as an engine without frozen-weight pruning computes them
    const { value, grads } =
      c.variant === 'all' ? gradientsFor(model.parameters(), loss) : variableGrads(loss, adapters);
    const mine = Object.fromEntries(adapters.map((p) => [p.name, grads[p.name] as tf.Tensor]));
    opt.step(mine);
    const l = (await value.data())[0] as number;
    tf.dispose([value, ...Object.values(grads)]);
    return l;
  };
  const losses = [await step()];
  const times: number[] = [];
  let cpu = 0;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    losses.push(await step());
    const used = process.cpuUsage(c0);
    cpu += (used.user + used.system) / 1000;
    times.push(performance.now() - t0);
  }
  const usage = memoryUsage();
  const sorted = [...times].sort((a, b) => a - b);
  return {
    backend: info.name,
    adapter: info.adapter,
    seq: c.seq,
    variant: c.variant,
    stepMs: sorted[Math.floor(sorted.length / 2)] as number,
    cpuMs: cpu / runs,
    times,
    losses,
    peakRssMiB: vmHwmMiB(),
    ...(usage.wasmHeapBytes === undefined ? {} : { wasmHeapMiB: mib(usage.wasmHeapBytes) }),
  };
}

/** Child: `--soak backend seq steps`: `train` over the same batch, memory sampled every 10 steps. */
async function childSoak(backend: BenchBackend, seq: number, steps: number) {
  const { info, model, adapters, opt } = await build(backend, 'plain');
  const ids = tf.tidy(() =>
    tf.cast(tf.mul(tf.randomUniform([1, seq], 0, 1, 'float32', 2), 49151), 'int32'),
  ) as tf.Tensor2D;
  const samples: Record<string, number>[] = [];
  const sample = (step: number, extra: Record<string, number> = {}) => {
    const u = memoryUsage();
    samples.push({
      step,
      numTensors: u.numTensors,
      rssMiB: mib(process.memoryUsage().rss),
      ...(u.wasmHeapBytes === undefined ? {} : { wasmHeapMiB: mib(u.wasmHeapBytes) }),
      ...(u.wasmLiveBytes === undefined ? {} : { wasmLiveMiB: mib(u.wasmLiveBytes) }),
      ...extra,
    });
  };
  sample(0);
  const started = performance.now();
  const result = await train(model, () => Array.from({ length: steps }, () => ids), {
    optimizer: opt,
    parameters: adapters,
    loss: (x) => model.forward(x, { labels: x, returnLogits: false }).loss,
    maxSteps: steps,
    progressBar: false,
    countTokens: (x) => x.size,
    onProgress: (l) => {
      if (l.step % 10 === 0) sample(l.step, { loss: l.loss, tokensPerSecond: l.tokensPerSecond ?? 0 });
    },
  });
  return {
    backend: info.name,
    adapter: info.adapter,
    seq,
    steps: result.steps,
    minutes: (performance.now() - started) / 60000,
    samples,
    peakRssMiB: vmHwmMiB(),
  };
}

if (process.argv[2] === '--steps' || process.argv[2] === '--soak') {
  const [mode, backend, seq, a, b] = process.argv.slice(2) as [string, BenchBackend, string, string, string];
  try {
    const out =
      mode === '--steps'
        ? await childSteps({ backend, seq: Number(seq), variant: a as Case['variant'] }, Number(b))
        : await childSoak(backend, Number(seq), Number(a));
    console.log(JSON.stringify(out));
  } catch (e) {
    console.log(JSON.stringify({ error: `${(e as Error).name}: ${(e as Error).message}`, peakRssMiB: vmHwmMiB() }));
  }
  process.exit(0);
}

// parent
function child<T>(args: string[]): T & { error?: string } {
  const res = spawnSync(process.execPath, [process.argv[1] as string, ...args], {
    encoding: 'utf8',
    env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2' },
    maxBuffer: 64 * 2 ** 20,
  });
  const last = res.stdout.trim().split('\n').at(-1) ?? '';
  try {
    return JSON.parse(last) as T & { error?: string };
  } catch {
    return { error: `exit ${res.status}: ${res.stderr.trim().split('\n').slice(-3).join(' | ')}` } as T & {
      error: string;
    };
  }
}

const only = (process.env.LORA_BENCH_ONLY ?? 'steps,soak').split(',');
const runsFor = (seq: number, backend: string) =>
  Number(process.env.LORA_BENCH_RUNS ?? 0) || (backend === 'cpu' ? 1 : seq >= 2048 ? 2 : 3);
const backends: BackendName[] = ['wasm', 'tensorflow', 'cpu'];
const have = new Set((await listBackends()).filter((r) => r.available).map((r) => r.name));
const defaults: Case[] = [];
for (const backend of backends) {
  if (!have.has(backend)) continue;
  for (const seq of backend === 'cpu' ? [128] : [128, 512, 2048]) defaults.push({ backend, seq, variant: 'plain' });
}
if (have.has('wasm')) {
  for (const seq of [512, 2048])
    defaults.push({ backend: 'wasm', seq, variant: 'ckpt' }, { backend: 'wasm', seq, variant: 'all' });
  defaults.push({ backend: 'wasm-threads', seq: 512, variant: 'plain' });
}
const cases: Case[] = process.env.LORA_BENCH_TRAIN
  ? process.env.LORA_BENCH_TRAIN.split(',').map((s) => {
      const [backend, seq, variant] = s.split(':');
      return { backend: backend as BenchBackend, seq: Number(seq), variant: (variant ?? 'plain') as Case['variant'] };
    })
  : defaults;

// the oracle's interpreter: in this checkout, else in the main worktree (a git worktree shares its common dir)
const root = join(import.meta.dirname, '..', '..', '..');
const common = spawnSync('git', ['-C', root, 'rev-parse', '--path-format=absolute', '--git-common-dir'], {
  encoding: 'utf8',
}).stdout?.trim();
const venvs = [root, ...(common ? [join(common, '..')] : [])].map((d) => join(d, '.venv-oracle', 'bin', 'python'));
const python = process.env.PYTHON ?? venvs.find((v) => existsSync(v)) ?? 'python3';
interface PeerResult {
  torch: string;
  threads: number;
  attn: string;
  stepMs: number;
  cpuMs: number;
  peakRssMiB: number;
}
function peer(seq: number): PeerResult | { error: string } {
  const res = spawnSync(
    python,
    [
      join(import.meta.dirname, '..', 'bench', 'peer_train_135m.py'),
      JSON.stringify(SMOLLM_135M),
      String(seq),
      String(seq >= 2048 ? 2 : 3),
    ],
    { encoding: 'utf8', maxBuffer: 16 * 2 ** 20 },
  );
  if (res.status !== 0) return { error: res.stderr.trim().split('\n').at(-1) ?? `exit ${res.status}` };
  return JSON.parse(res.stdout.trim().split('\n').at(-1) as string) as PeerResult;
}

const fmt = (ms: number) => (ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`);
console.log(
  `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model}), load average ${loadavg()
    .map((x) => x.toFixed(1))
    .join(' ')} at the start; SmolLM-135M shape, LoRA r 8 on q/v, AdamW, batch 1\n`,
);
if (only.includes('steps')) {
  const peers = new Map<number, PeerResult | { error: string }>();
  // each row printed as soon as it is measured, so that a run cut short keeps what it measured
  console.log(
    '| seq | runtime | step (median) | CPU time per step | tokens/s | step vs PyTorch | CPU time vs PyTorch | peak memory | loss |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  const row = (line: string) => console.log(line);
  for (const seq of [...new Set(cases.map((c) => c.seq))].sort((a, b) => a - b)) {
    console.error(`PyTorch peer at ${seq}…`);
    peers.set(seq, peer(seq));
    for (const c of cases.filter((x) => x.seq === seq)) {
      console.error(`@lora ${c.backend} ${c.seq} ${c.variant}…`);
      const r = child<StepResult>(['--steps', c.backend, String(c.seq), c.variant, String(runsFor(c.seq, c.backend))]);
      const p = peers.get(seq);
      const label = `${c.backend}${c.variant === 'ckpt' ? ', gradient checkpointing' : c.variant === 'all' ? ', gradients for every weight' : ''}`;
      if (r.error) {
        row(`| ${seq} | ${label} | failed: ${r.error} | | | | | peak RSS ${r.peakRssMiB?.toFixed(0) ?? '?'} MiB | |`);
        continue;
      }
      const ratio = p && 'stepMs' in p ? (r.stepMs / p.stepMs).toFixed(2) : '–';
      const cpuRatio = p && 'cpuMs' in p ? (r.cpuMs / p.cpuMs).toFixed(2) : '–';
      row(
        `| ${seq} | ${label} (${r.adapter}) | ${fmt(r.stepMs)} | ${fmt(r.cpuMs)} | ${((seq / r.stepMs) * 1000).toFixed(0)} | ${ratio}× | ${cpuRatio}× | ${r.peakRssMiB.toFixed(0)} MiB${r.wasmHeapMiB === undefined ? '' : ` (wasm heap ${r.wasmHeapMiB.toFixed(0)} MiB)`} | ${r.losses.map((l) => l.toFixed(3)).join(' → ')} |`,
      );
    }
    const p = peers.get(seq);
    row(
      p && 'stepMs' in p
        ? `| ${seq} | PyTorch ${p.torch} CPU, ${p.threads} threads, ${p.attn} attention | ${fmt(p.stepMs)} | ${fmt(p.cpuMs)} | ${((seq / p.stepMs) * 1000).toFixed(0)} | 1× | 1× | ${p.peakRssMiB.toFixed(0)} MiB | |`
        : `| ${seq} | PyTorch | failed: ${(p as { error: string }).error} | | | | | | |`,
    );
  }
}
if (only.includes('soak')) {
  const [backend, seq, steps] = (process.env.LORA_BENCH_SOAK ?? 'wasm:512:200').split(':') as [
    BenchBackend,
    string,
    string,
  ];
  console.error(`soak: ${steps} steps at ${seq} on ${backend}…`);
  const s = child<Awaited<ReturnType<typeof childSoak>>>(['--soak', backend, seq, steps]);
  if (s.error) console.log(`\nsoak failed: ${s.error}`);
  else {
    console.log(
      `\nSoak: ${s.steps} steps at ${s.seq} on ${s.backend} (${s.adapter}) in ${s.minutes.toFixed(1)} min; memory every 10 steps:\n`,
    );
    console.log('| step | tensors | wasm heap MiB | wasm live MiB | RSS MiB | loss | tokens/s |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    for (const x of s.samples)
      console.log(
        `| ${x.step} | ${x.numTensors} | ${x.wasmHeapMiB?.toFixed(0) ?? '–'} | ${x.wasmLiveMiB?.toFixed(0) ?? '–'} | ${x.rssMiB?.toFixed(0)} | ${x.loss?.toFixed(4) ?? ''} | ${x.tokensPerSecond?.toFixed(1) ?? ''} |`,
      );
  }
}
