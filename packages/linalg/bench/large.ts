/**
 * `BENCH_SUITE=large npm run bench -w @lora/linalg`: full and truncated SVDs at the size of real models
 * (1024² … 4096×11008) on the active backend (LORA_BACKEND, default wasm), against LAPACK through numpy
 * (float32 and float64, one thread and all threads), torch CPU and, for the truncated cases, scipy's svds
 * (ARPACK) and torch.svd_lowrank, all on the same matrices (bench/peers_large.py makes them into
 * .bench/large/). Each timing waits for the CPUs to be idle first. Prints markdown tables.
 *
 * BENCH_TF_FLAGS (JSON) sets tfjs flags before our runs; BENCH_QUIET_EACH=0 waits for idle CPUs once a case
 * (before its warm-up) instead of before every run (the default here; large-gpu.ts defaults to 0);
 * BENCH_CASES picks cases (see peers_large.py); BENCH_PEERS=0 skips the peers; PYTHON names the interpreter;
 * BENCH_OURS=0 times the peers only; BENCH_RUNS sets the runs of each full SVD (default 3 up to 2048², 1 above; the median is kept);
 * BENCH_CASE_LIMIT_S stops one of our decompositions after that many seconds (through its AbortSignal: the
 * table then says "> N s"), so that one slow case cannot take a bounded run (the GPU machine's) with it.
 * Each of our SVDs also reports where its time went, stage by stage (its onProgress), and on webgpu how many
 * programs it ran, its Jacobi sweeps and serial inner sweeps (Σ over steps of the most inner sweeps a pair took:
 * what bounds the per-pair Jacobi programs). BENCH_JACOBI (JSON, any JacobiSvdOptions, e.g. '{"innerSweeps":1}',
 * '{"fused":true}', '{"innerExit":false}', '{"innerSweeps":3,"singleSweepAbove":0.01}') runs the Jacobi SVD
 * with those options instead of svd's defaults (webgpu only), to tune it on the GPU machine.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type BackendInfo, parseSafetensors } from '@lora/tensor';
import { type LinalgProgress, type SvdOptions, svd, svdTruncated } from '../src/index';
import { type JacobiSvdOptions, jacobiStats, svdJacobi } from '../src/svd-jacobi';
import { blasEnv } from './cases';
import { waitForQuiet } from './quiet';

const ALL = 'full_1024,full_2048,full_4096,full_4096x11008,trunc_4096,trunc_4096x11008,ties_4096';

/**
 * Counts the programs a webgpu backend runs (every runWebGPUProgram call: our WGSL and tfjs's ops
 * alike), for the table's note; null on other backends.
 */
function programCounter(): { reset(): void; count(): number } | null {
  const backend = tf.backend() as unknown as { runWebGPUProgram?: (...args: unknown[]) => unknown };
  const run = backend.runWebGPUProgram;
  if (typeof run !== 'function') return null;
  let count = 0;
  backend.runWebGPUProgram = function (this: unknown, ...args: unknown[]) {
    count++;
    return run.apply(this, args);
  };
  return {
    reset: () => {
      count = 0;
    },
    count: () => count,
  };
}

/** Where the bench keeps its matrices and finds its peer script; how it starts its backend. */
export interface LargeBenchOptions {
  dir: string;
  peersScript: string;
  init: () => Promise<BackendInfo>;
}

/** The large suite (see the file's comment); prints its tables on stdout. */
export async function largeBench({ dir, peersScript, init }: LargeBenchOptions): Promise<void> {
  const cases = (process.env.BENCH_CASES ?? ALL).split(',').filter(Boolean);
  const python = process.env.PYTHON ?? 'python3';

  function run(args: string[], env: NodeJS.ProcessEnv = {}): string {
    const res = spawnSync(python, [peersScript, ...args], {
      env: { ...process.env, ...env },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      maxBuffer: 1 << 28,
    });
    if (res.status !== 0) throw new Error(`${python} peers_large.py ${args[0]} failed: ${res.error?.message ?? ''}`);
    return res.stdout;
  }

  console.error(`making the matrices in ${dir} (once)…`);
  run(['make', dir, cases.join(',')]);

  const info = await init();
  tf.env().set('PROD', true);
  // BENCH_TF_FLAGS (JSON): tfjs flags for the run, e.g. '{"WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE":60}'
  for (const [flag, value] of Object.entries(
    JSON.parse(process.env.BENCH_TF_FLAGS ?? '{}') as Record<string, number | boolean>,
  ))
    tf.env().set(flag, value);
  const programs = programCounter();
  const jacobi = process.env.BENCH_JACOBI ? (JSON.parse(process.env.BENCH_JACOBI) as JacobiSvdOptions) : null;
  const fullSvd = (a: tf.Tensor2D, o: SvdOptions = {}) =>
    jacobi && info.name === 'webgpu' ? svdJacobi(a, { ...jacobi, ...o }) : svd(a, { method: 'backend', ...o });
  const limitS = Number(process.env.BENCH_CASE_LIMIT_S ?? 0);
  // BENCH_QUIET_EACH=0: wait for idle CPUs once, before the warm-up, then time the runs back to back, as
  // the peers are timed; a GPU left idle for the wait clocks down (the H200, 2026-12-04: the Jacobi SVD
  // at 1024² took 256–354 ms after each 3 s wait, 88–101 ms back to back)
  const quietEach = process.env.BENCH_QUIET_EACH !== '0';

  /** Options for one of our calls: the time limit's signal, and a stage timer fed by onProgress. */
  function watched() {
    const stages = new Map<string, number>();
    let stage = '';
    let at = performance.now();
    return {
      signal: limitS > 0 ? AbortSignal.timeout(limitS * 1000) : undefined,
      onProgress: (p: LinalgProgress) => {
        const now = performance.now();
        if (stage) stages.set(stage, (stages.get(stage) ?? 0) + now - at);
        stage = p.stage;
        at = now;
      },
      /** "qr 1.2 s, bidiagonalize 3.4 s, …" (the time since a stage's first report until the next stage's) */
      summary: () =>
        [...stages]
          .map(([k, ms]) => `${k} ${ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`}`)
          .join(', '),
    };
  }
  const stopped = (e: unknown) => e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError');

  interface Ours {
    ms: number;
    cpu: number;
    load: number;
    note: string;
    /** stopped at the time limit: ms is a lower bound */
    over?: boolean;
  }
  const ours: Record<string, Record<string, Ours>> = {};

  /**
   * Median wall time (and this process's CPU time in that run: the machine may be shared) of `runs` runs of
   * fn, each after waiting for idle CPUs (with BENCH_QUIET_EACH=0 only the first, and none where the caller
   * `waited` before its warm-up); returns the last result too.
   */
  async function timed<T>(
    runs: number,
    fn: () => Promise<T>,
    done: (r: T) => void,
    waited = false,
  ): Promise<{ ms: number; cpu: number; load: number; last: T }> {
    const times: [number, number, number][] = [];
    let last: T | undefined;
    for (let i = 0; i < runs; i++) {
      if (quietEach || (i === 0 && !waited)) await waitForQuiet();
      if (last !== undefined) done(last);
      const load = loadavg()[0] as number;
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      last = await fn();
      const c = process.cpuUsage(c0);
      times.push([performance.now() - t0, (c.user + c.system) / 1000, load]);
    }
    times.sort((a, b) => a[0] - b[0]);
    const [ms, cpu, load] = times[Math.floor(times.length / 2)] as [number, number, number];
    return { ms, cpu, load, last: last as T };
  }

  // BENCH_OURS=0: the peers only (their own process beside ours, on a shared machine)
  for (const name of process.env.BENCH_OURS === '0' ? [] : cases) {
    const file = parseSafetensors(new Uint8Array(readFileSync(join(dir, `${name}.safetensors`)))).tensors;
    const a = file.a as tf.Tensor2D;
    const [m, n] = a.shape;
    const row: Record<string, Ours> = {};
    if (name.startsWith('full')) {
      const runs = Number(process.env.BENCH_RUNS ?? (m * n > 2048 * 2048 ? 1 : 3));
      // one wait before the warm-up, none between it and the timed runs (BENCH_QUIET_EACH=0)
      const waitOnce = runs > 1 && !quietEach;
      if (runs > 1) {
        if (waitOnce) await waitForQuiet();
        const warm = await fullSvd(a); // first call: kernels compiled, weights packed
        tf.dispose([warm.U, warm.S, warm.Vh]);
      }
      let w = watched();
      let result: Awaited<ReturnType<typeof timed<Awaited<ReturnType<typeof svd>>>>>;
      try {
        result = await timed(
          runs,
          () => {
            w = watched();
            programs?.reset();
            return fullSvd(a, { signal: w.signal, onProgress: w.onProgress });
          },
          (x) => tf.dispose([x.U, x.S, x.Vh]),
          waitOnce,
        );
      } catch (e) {
        if (!stopped(e)) throw e;
        row.svd = {
          ms: limitS * 1000,
          cpu: Number.NaN,
          load: Number.NaN,
          note: `stopped at ${limitS} s (${w.summary()})`,
          over: true,
        };
        tf.dispose(Object.values(file));
        ours[name] = row;
        console.error(`  ${name}: stopped after ${limitS} s (${w.summary()})`);
        continue;
      }
      const { ms, cpu, load, last: r } = result;
      // accuracy: σ against LAPACK's (float64), and ‖A·x − U·S·Vh·x‖ / ‖A·x‖ for a random x
      const lapackFile = join(dir, `${name}.lapack.json`);
      const s = Float64Array.from(await r.S.data());
      let serr = Number.NaN;
      if (existsSync(lapackFile)) {
        const want = JSON.parse(readFileSync(lapackFile, 'utf8')) as number[];
        serr = 0;
        for (let i = 0; i < s.length; i++) serr = Math.max(serr, Math.abs((s[i] as number) - (want[i] as number)));
        serr /= want[0] as number;
      }
      const probe = tf.tidy(() => {
        const x = tf.randomNormal([n, 1], 0, 1, 'float32', 1);
        const ax = tf.matMul(a, x);
        const usvx = tf.matMul(r.U, tf.mul(tf.reshape(r.S, [-1, 1]), tf.matMul(r.Vh, x)));
        return tf.div(tf.norm(tf.sub(ax, usvx)), tf.norm(ax));
      });
      const rec = (await probe.data())[0] as number;
      tf.dispose([probe, r.U, r.S, r.Vh]);
      row.svd = {
        ms,
        cpu,
        load,
        note: `max Δσ/σ₁ ${serr.toExponential(1)}, reconstruction ${rec.toExponential(1)}${programs ? `, ${programs.count()} programs, ${jacobiStats.sweeps} sweeps, ${jacobiStats.serialInnerSweeps} serial inner sweeps` : ''} (${w.summary()})`,
      };
    } else {
      for (const k of name.startsWith('ties') ? [16] : [16, 64]) {
        const w = watched();
        let result: Awaited<ReturnType<typeof timed<Awaited<ReturnType<typeof svdTruncated>>>>>;
        try {
          result = await timed(
            1,
            () => svdTruncated(a, { rank: k, signal: w.signal, onProgress: w.onProgress }),
            (x) => tf.dispose([x.U, x.S, x.Vh]),
          );
        } catch (e) {
          if (!stopped(e)) throw e;
          row[`svdTruncated k${k}`] = {
            ms: limitS * 1000,
            cpu: Number.NaN,
            load: Number.NaN,
            note: `stopped at ${limitS} s`,
            over: true,
          };
          continue;
        }
        const { ms, cpu, load, last: r } = result;
        const err = tf.tidy(() => {
          const exact = tf.matMul(
            tf.mul(tf.slice(file.u64 as tf.Tensor2D, [0, 0], [-1, k]), tf.slice(file.s64 as tf.Tensor1D, 0, k)),
            tf.slice(file.vh64 as tf.Tensor2D, [0, 0], [k, -1]),
          );
          const got = tf.matMul(tf.mul(r.U, r.S), r.Vh);
          return tf.div(tf.max(tf.abs(tf.sub(got, exact))), tf.max(tf.abs(exact)));
        });
        const e = (await err.data())[0] as number;
        tf.dispose([err, r.U, r.S, r.Vh]);
        row[`svdTruncated k${k}`] = {
          ms,
          cpu,
          load,
          note: `${r.iterations} iterations, residual ${r.residual.toExponential(1)}, max Δ(U·S·Vh) ${e.toExponential(1)}${r.converged ? '' : ' (not converged)'}`,
        };
      }
    }
    tf.dispose(Object.values(file));
    ours[name] = row;
    console.error(
      `  ${name} (${m}×${n}):`,
      Object.entries(row)
        .map(
          ([k, v]) => `${k} ${v.ms.toFixed(0)} ms (CPU ${v.cpu.toFixed(0)} ms, load ${v.load.toFixed(1)}), ${v.note}`,
        )
        .join('; '),
    );
  }

  type PeerRow = Record<string, number>;
  const peers: { threads: number; out: Record<string, PeerRow | string | number> }[] = [];
  if (process.env.BENCH_PEERS !== '0') {
    const all = Math.max(cpus().length, 1);
    const threadCounts = (process.env.BENCH_PEER_THREADS ?? `1,${all}`).split(',').map(Number);
    for (const threads of [...new Set(threadCounts)]) {
      await waitForQuiet();
      console.error(`timing the peers with ${threads} thread(s)…`);
      const res = spawnSync(python, [peersScript, 'time', dir, cases.join(',')], {
        env: blasEnv(threads),
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      if (res.status === 0) peers.push({ threads, out: JSON.parse(res.stdout.trim().split('\n').at(-1) as string) });
      else console.error(`the peers failed (${threads} threads)`);
    }
  }

  console.error(`raw: ${JSON.stringify({ ours, peers })}`);
  const fmt = (ms: number | undefined) =>
    ms === undefined ? '–' : ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`;
  /** wall time, and CPU time when it differs (other work on the machine, or several threads) */
  const both = (ms: number | undefined, cpu: number | undefined) =>
    ms === undefined
      ? '–'
      : cpu === undefined || Math.abs(cpu - ms) < 0.1 * ms
        ? fmt(ms)
        : `${fmt(ms)} (CPU ${fmt(cpu)})`;
  const ourTime = (o: Ours | undefined) => (o?.over ? `> ${fmt(o.ms)}` : both(o?.ms, o?.cpu));
  const peerTime = (row: PeerRow | undefined, key: string) => both(row?.[key], row?.[`${key} cpu`]);
  const versions = peers[0]?.out;
  console.log(
    `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, backend ${info.name} (${info.adapter}), ${cpus().length} CPUs${versions ? `; numpy ${versions.numpy}, torch ${versions.torch}${versions.scipy ? `, scipy ${versions.scipy}` : ''}` : ''}\n`,
  );
  const peerCol = (t: number) => peers.find((p) => p.threads === t)?.out;
  const cuda = peers.some((p) =>
    Object.values(p.out).some((r) => typeof r === 'object' && r['torch cuda'] !== undefined),
  );
  const counts = peers.map((p) => p.threads);
  const one = counts.includes(1) ? 1 : undefined;
  const many = counts.find((t) => t !== 1);
  const head = [
    'case',
    '@lora/linalg',
    'accuracy',
    ...(one ? ['numpy f32, 1 thread', 'numpy f64, 1 thread', 'torch CPU, 1 thread'] : []),
    ...(many ? [`numpy f32, ${many} threads`, `torch CPU, ${many} threads`] : []),
    ...(cuda ? ['torch CUDA'] : []),
    `ours / numpy f32${one ? ', 1 thread' : ''}`,
  ];
  console.log(`| ${head.join(' | ')} |`);
  console.log(`|${' --- |'.repeat(head.length)}`);
  for (const name of cases.filter((c) => c.startsWith('full'))) {
    const o = ours[name]?.svd;
    const p1 = one ? (peerCol(1)?.[name] as PeerRow | undefined) : undefined;
    const pa = many ? (peerCol(many)?.[name] as PeerRow | undefined) : undefined;
    const ref = (p1 ?? pa)?.['numpy f32'];
    const refCpu = (p1 ?? pa)?.['numpy f32 cpu'];
    const gpu = (pa ?? p1)?.['torch cuda'];
    const cells = [
      `full SVD ${name.slice(5).replace('x', '×')}${name.includes('x') ? '' : '²'}`,
      ourTime(o),
      `${o?.note ?? ''}${o && !o.over ? `; load ${o.load.toFixed(1)}` : ''}`,
      ...(one ? [peerTime(p1, 'numpy f32'), peerTime(p1, 'numpy f64'), peerTime(p1, 'torch cpu')] : []),
      ...(many ? [peerTime(pa, 'numpy f32'), peerTime(pa, 'torch cpu')] : []),
      ...(cuda ? [`${fmt(gpu)}${o && gpu ? ` (ours ${o.over ? '> ' : ''}${(o.ms / gpu).toFixed(1)}×)` : ''}`] : []),
      o && ref
        ? `${o.over ? '> ' : ''}${(o.ms / ref).toFixed(2)}×${refCpu && !o.over ? `, CPU ${(o.cpu / refCpu).toFixed(2)}×` : ''}`
        : '–',
    ];
    console.log(`| ${cells.join(' | ')} |`);
  }
  console.log(
    '\n| case | @lora/linalg svdTruncated | its accuracy | scipy svds (ARPACK, tol 1e-6) | torch.svd_lowrank niter 4 / 16 (error) | numpy full SVD f32 |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const name of cases.filter((c) => !c.startsWith('full'))) {
    const p1 = peerCol(one ?? (many as number))?.[name] as PeerRow | undefined;
    const none: Ours = { ms: Number.NaN, cpu: Number.NaN, load: Number.NaN, note: '(not run)', over: false };
    const rows: [string, Ours][] = ours[name]
      ? Object.entries(ours[name])
      : (name.startsWith('ties') ? [16] : [16, 64]).map((k) => [`svdTruncated k${k}`, none]);
    for (const [label, o] of rows) {
      const k = label.slice('svdTruncated k'.length);
      const lr = (it: number) =>
        p1?.[`torch svd_lowrank k${k} niter${it}`] === undefined
          ? '–'
          : `${peerTime(p1, `torch svd_lowrank k${k} niter${it}`)} (${(p1[`torch svd_lowrank k${k} niter${it} err`] as number).toExponential(1)})`;
      console.log(
        `| ${name} rank ${k} | ${ourTime(o)} | ${o.note}${o.over ? '' : `; load ${o.load.toFixed(1)}`} | ${peerTime(p1, `scipy svds k${k}`)}${p1?.[`scipy svds k${k} err`] !== undefined ? ` (${(p1[`scipy svds k${k} err`] as number).toExponential(1)})` : ''} | ${lr(4)} / ${lr(16)} | ${peerTime(p1, 'numpy f32 full')} |`,
      );
    }
  }
}
