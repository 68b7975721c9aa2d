/**
 * The kill suite: the writing commands (`lora merge` of a file and of a sharded directory, `lora
 * combine`, `lora loftq`, `lora reduce-intruders`, `lora eva`) and `saveAdapter`, run as child processes and killed with SIGINT and with SIGKILL at 20
 * seeded random moments each while they replace an existing output; and run against outputs they
 * must refuse (an existing one without --force, one holding other files, a parent of an input, `.`,
 * a read-only folder). Every input stays byte-identical, the final path holds the complete old or
 * the complete new output, and after the next run no temporary is left.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  type FSWatcher,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  watch,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getPeftModel, loraConfig, loraConfigToJson, saveAdapter } from '@lora/core';
import { Linear, Module, withoutInit } from '@lora/nn';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { OutputError } from '@lora/tensor/node';
import { runCli } from './cli';
import { writeTinyLlama } from './tiny-llama.test-util';

const CACHE = join(import.meta.dirname, '..', 'node_modules', '.cache', 'lora-output-safety');
/** Kills per signal and command (LORA_KILL_TRIALS overrides, e.g. for a quick local run). */
const TRIALS = Number(process.env.LORA_KILL_TRIALS ?? 20);
/** Children run at once: the machine's two cores stay busy without starving each other. */
const CONCURRENCY = 2;
/** The base checkpoint: LAYERS float32 weights of WIDTH², about 48 MB, so that a merge works for over a second. */
const LAYERS = 12;
const WIDTH = 1024;
/**
 * The smaller checkpoint of `lora loftq` and `lora reduce-intruders` (a full SVD or a quantization of
 * each weight: work of about a second on the 48 MB base would take a minute).
 */
const SMALL_LAYERS = 4;
const SMALL_WIDTH = 128;

let root: string;
let inputs: string;
const hashesBefore = new Map<string, string>();

// ---- files and hashes ----

/**
 * A stable hash of a file, or of a directory's files and names (a mix of two versions hashes differently).
 * An adapter_config.json's `base_model_name_or_path` is left out: `lora loftq`'s adapter names the
 * directory it was written to (as PEFT's LoftQ workflow saves it), which differs from trial to trial.
 */
function hashOf(path: string): string | null {
  if (!existsSync(path)) return null;
  const h = createHash('sha256');
  const walk = (p: string) => {
    if (statSync(p).isDirectory()) {
      for (const e of readdirSync(p).sort()) {
        h.update(`${relative(path, join(p, e))}\n`);
        walk(join(p, e));
      }
    } else if (p.endsWith('adapter_config.json'))
      h.update(readFileSync(p, 'utf8').replace(/("base_model_name_or_path":\s*)"[^"]*"/, '$1"…"'));
    else h.update(readFileSync(p));
  };
  walk(path);
  return h.digest('hex');
}

/** A copy of `from` at `to` made of hard links: instant, and any write into a file in place would show in `from`. */
function linkCopy(from: string, to: string): void {
  if (!statSync(from).isDirectory()) {
    linkSync(from, to);
    return;
  }
  mkdirSync(to);
  for (const e of readdirSync(from)) linkCopy(join(from, e), join(to, e));
}

/** Seeded uniform numbers in [0, 1) (mulberry32). */
function uniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomValues(n: number, seed: number, scale: number): Float32Array {
  const next = uniform(seed);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (next() * 2 - 1) * scale;
  return v;
}

const raw = (shape: number[], seed: number, scale = 0.05) => ({
  dtype: 'float32' as const,
  shape,
  values: randomValues(shape[0]! * shape[1]!, seed, scale),
});

/** A PEFT adapter directory with rank `r` on every `layers.N.proj` (of `layers` layers `width` wide). */
async function writeAdapter(dir: string, r: number, seed: number, layers = LAYERS, width = WIDTH): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const tensors: Record<string, ReturnType<typeof raw>> = {};
  for (let i = 0; i < layers; i++) {
    tensors[`base_model.model.layers.${i}.proj.lora_A.weight`] = raw([r, width], seed * 1000 + 2 * i);
    tensors[`base_model.model.layers.${i}.proj.lora_B.weight`] = raw([width, r], seed * 1000 + 2 * i + 1);
  }
  writeFileSync(
    join(dir, 'adapter_model.safetensors'),
    await serializeSafetensors(tensors, { metadata: { format: 'pt' } }),
  );
  writeFileSync(
    join(dir, 'adapter_config.json'),
    loraConfigToJson(loraConfig({ r, loraAlpha: 2 * r, targetModules: ['proj'] })),
  );
}

// ---- child processes ----

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  err: string;
  /** When the child printed the line `options.mark` matches, ms after the spawn. */
  markMs: number | null;
  /** When a line `working` matches appeared (ms from the spawn), if one did and `working` was given. */
  workingMs: number | null;
  ms: number;
}

/** When a trial's kill is sent. */
interface Kill {
  afterMs: number;
  signal: NodeJS.Signals;
  /**
   * Timed from the moment a temporary (a name {@link TEMP} matches) appears in this folder, instead of
   * from the `mark` line: that moment is when the writer has begun to write, so a kill soon after it
   * lands mid-write however fast the machine is.
   */
  fromTemporaryIn?: string;
}

/**
 * Runs the child; with `kill`, sends the signal `afterMs` after the child prints a line `mark` matches
 * (timed from there, not from the spawn: how long Node takes to boot varies most with the machine's load),
 * or after a temporary appears in `kill.fromTemporaryIn`.
 */
function runChild(
  args: string[],
  options: { cwd?: string; mark?: RegExp; working?: RegExp; kill?: Kill } = {},
): Promise<Run> {
  return new Promise((done, fail) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ['--import', join(CACHE, 'register.mjs'), join(CACHE, 'child.js'), ...args], {
      cwd: options.cwd ?? root,
      env: { ...process.env, LORA_BACKEND: 'cpu' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    let markMs: number | null = null;
    let workingMs: number | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const kill = options.kill;
    const arm = () => {
      if (kill && timer === undefined) timer = setTimeout(() => child.kill(kill.signal), kill.afterMs);
    };
    let watcher: FSWatcher | undefined;
    if (kill?.fromTemporaryIn)
      watcher = watch(kill.fromTemporaryIn, (_event, name) => {
        if (name && TEMP.test(name)) {
          arm();
          watcher?.close();
        }
      });
    child.stderr.on('data', (d) => {
      err += d;
      if (workingMs === null && options.working?.test(err)) workingMs = performance.now() - t0;
      if (markMs === null && options.mark?.test(err)) {
        markMs = performance.now() - t0;
        if (!kill?.fromTemporaryIn) arm();
      }
    });
    // a child that hangs fails the trial instead of the whole suite
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', fail);
    child.on('close', (code, signal) => {
      watcher?.close();
      clearTimeout(timer);
      clearTimeout(guard);
      done({ code, signal, err: err.replace(/^started\n/, ''), markMs, workingMs, ms: performance.now() - t0 });
    });
  });
}

/** Runs `jobs` with at most CONCURRENCY at once, in order of results. */
async function pool<T>(jobs: (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < jobs.length) {
        const i = next++;
        results[i] = await (jobs[i] as () => Promise<T>)();
      }
    }),
  );
  return results;
}

// ---- what is run ----

interface Scenario {
  name: string;
  /** The output's name in its folder. */
  outName: string;
  /** The child's arguments writing the 'old' or the 'new' output at `out`. */
  args(out: string, which: 'old' | 'new', force: boolean): string[];
  /** A line on stderr that shows the work had started. */
  working: RegExp;
  /**
   * The line the kills are timed from: 'started' (the child's modules are loaded) for the commands;
   * saveAdapter's own 'saving' (the model it saves takes longer to build than to save).
   */
  mark: RegExp;
  /** The inputs, for the refusal cases (the output may not contain them). */
  input(): string;
}

const cli = (...a: string[]) => ['cli', ...a];
const STARTED = /^started$/m;
const forceFlag = (force: boolean) => (force ? ['--force'] : []);

/** `lora merge` of the base `base` (a file or a sharded directory under the inputs) into `outName`. */
const mergeScenario = (name: string, base: string, outName: string): Scenario => ({
  name,
  outName,
  args: (out, which, force) =>
    cli(
      'merge',
      '--base',
      join(inputs, base),
      '--adapter',
      join(inputs, `adapter-${which}`),
      '--out',
      out,
      ...forceFlag(force),
    ),
  working: /^merging /m,
  mark: STARTED,
  input: () => join(inputs, base),
});

const scenarios: Scenario[] = [
  mergeScenario('lora merge, single-file base', 'base.safetensors', 'merged.safetensors'),
  mergeScenario('lora merge, sharded directory base', 'sharded', 'merged'),
  {
    name: 'lora combine',
    outName: 'mix',
    args: (out, which, force) =>
      cli(
        'combine',
        '--adapter',
        join(inputs, 'combine-1'),
        '--adapter',
        join(inputs, 'combine-2'),
        '--weights',
        which === 'new' ? '0.7,0.3' : '1,-1',
        '--type',
        'cat',
        '--out',
        out,
        ...forceFlag(force),
      ),
    working: /^read /m,
    mark: STARTED,
    input: () => join(inputs, 'combine-1'),
  },
  {
    name: 'lora loftq',
    outName: 'quantized',
    args: (out, which, force) =>
      cli(
        'loftq',
        '--base',
        join(inputs, 'small'),
        '--target',
        'proj',
        '--rank',
        '4',
        '--svd',
        'randomized',
        '--iter',
        which === 'new' ? '2' : '1',
        '--out',
        out,
        ...forceFlag(force),
      ),
    working: /^LoftQ on /m,
    mark: STARTED,
    input: () => join(inputs, 'small'),
  },
  {
    name: 'lora reduce-intruders',
    outName: 'reduced',
    args: (out, which, force) =>
      cli(
        'reduce-intruders',
        '--base',
        join(inputs, 'small', 'model.safetensors'),
        '--adapter',
        join(inputs, `small-adapter-${which}`),
        '--out',
        out,
        ...forceFlag(force),
      ),
    working: /^reducing intruder dimensions /m,
    mark: STARTED,
    input: () => join(inputs, 'small-adapter-old'),
  },
  {
    name: 'lora eva',
    outName: 'eva-adapter',
    args: (out, which, force) =>
      cli(
        'eva',
        '--model',
        join(inputs, 'tiny-llama'),
        '--data',
        join(inputs, 'eva-data.txt'),
        '--r',
        which === 'new' ? '4' : '2',
        '--target-modules',
        'q_proj,v_proj',
        '--batch-size',
        '3',
        '--out',
        out,
        ...forceFlag(force),
      ),
    working: /^EVA batch /m,
    mark: STARTED,
    input: () => join(inputs, 'tiny-llama'),
  },
  {
    name: 'saveAdapter (three adapters)',
    outName: 'adapter',
    args: (out, which, force) => ['save-adapter', out, which === 'new' ? '2' : '1', ...forceFlag(force)],
    working: /^saving/m,
    mark: /^saving$/m,
    input: () => join(inputs, 'initial'),
  },
];

interface Expected {
  old: string;
  new: string;
  /** The pristine old output that trials hard-link from. */
  pristine: string;
  /** How long the command ran after its `mark` line, in the calibration run. */
  workMs: number;
  /** How long it ran after its `working` line, in the calibration run. */
  afterWorkingMs: number;
}
const expected = new Map<string, Expected>();

class Tiny extends Module {
  proj = this.registerModule('proj', new Linear(4, 4));
  forward(x: tf.Tensor): tf.Tensor {
    return this.proj.call(x) as tf.Tensor;
  }
}
const tiny = () =>
  getPeftModel(
    withoutInit(() => new Tiny()),
    { r: 2, targetModules: ['proj'] },
  );

/** The next run, in this process: recovers leftovers, then refuses (the output exists) or writes. */
async function nextRun(s: Scenario, out: string): Promise<void> {
  if (s.name.startsWith('saveAdapter')) {
    const peft = tiny();
    try {
      await saveAdapter(peft, out, { warn: () => undefined });
    } catch (e) {
      if (!(e instanceof OutputError && e.code === 'exists')) throw e;
    } finally {
      peft.dispose();
    }
    return;
  }
  const code = await runCli(s.args(out, 'new', false).slice(1), { out: () => undefined, err: () => undefined });
  expect([0, 2]).toContain(code);
}

const TEMP = /^\..+\.\d+\.[0-9a-f]{8}\.(tmp|old)$/;

beforeAll(async () => {
  await initBackend('cpu');
  process.env.LORA_BACKEND = 'cpu';
  // the child, bundled from the sources (tests run without a build); saveAdapter's import of
  // '@lora/tensor/node' (a variable specifier, for browsers) is pointed at the same bundle's chunk
  await build({
    entryPoints: {
      child: join(import.meta.dirname, 'output-safety.child.ts'),
      'tensor-node': join(import.meta.dirname, '..', '..', 'tensor', 'src', 'node.ts'),
    },
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    conditions: ['@lora/source'],
    outdir: CACHE,
    logLevel: 'warning',
    plugins: [
      {
        name: 'tfjs-external',
        setup(b) {
          // tfjs packages come from node_modules; their dist/ files (gradient registration) are bundled
          b.onResolve({ filter: /^@tensorflow\// }, (a) =>
            a.path.includes('/dist/') ? undefined : { path: a.path, external: true },
          );
        },
      },
    ],
  });
  writeFileSync(
    join(CACHE, 'hooks.mjs'),
    `export async function resolve(s, c, next) {\n  return s === '@lora/tensor/node' ? { url: new URL('./tensor-node.js', import.meta.url).href, shortCircuit: true } : next(s, c);\n}\n`,
  );
  writeFileSync(
    join(CACHE, 'register.mjs'),
    `import { register } from 'node:module';\nregister('./hooks.mjs', import.meta.url);\n`,
  );

  root = realpathSync(mkdtempSync(join(tmpdir(), 'lora-kill-')));
  inputs = join(root, 'inputs');
  mkdirSync(inputs);
  const weights: Record<string, ReturnType<typeof raw>> = {};
  for (let i = 0; i < LAYERS; i++) weights[`layers.${i}.proj.weight`] = raw([WIDTH, WIDTH], 7 + i);
  writeFileSync(join(inputs, 'base.safetensors'), await serializeSafetensors(weights, { metadata: { format: 'pt' } }));
  mkdirSync(join(inputs, 'sharded'));
  const weightMap: Record<string, string> = {};
  const names = Object.keys(weights);
  for (const [k, part] of [names.slice(0, LAYERS / 2), names.slice(LAYERS / 2)].entries()) {
    const file = `model-0000${k + 1}-of-00002.safetensors`;
    writeFileSync(
      join(inputs, 'sharded', file),
      await serializeSafetensors(Object.fromEntries(part.map((n) => [n, weights[n]!])), { metadata: { format: 'pt' } }),
    );
    for (const n of part) weightMap[n] = file;
  }
  writeFileSync(
    join(inputs, 'sharded', 'model.safetensors.index.json'),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  writeFileSync(join(inputs, 'sharded', 'config.json'), '{"model_type": "net"}');
  writeFileSync(join(inputs, 'sharded', 'tokenizer.json'), '{}');
  await writeAdapter(join(inputs, 'adapter-old'), 8, 1);
  await writeAdapter(join(inputs, 'adapter-new'), 8, 2);
  await writeAdapter(join(inputs, 'combine-1'), 64, 3);
  await writeAdapter(join(inputs, 'combine-2'), 64, 4);
  await writeAdapter(join(inputs, 'initial'), 8, 5);
  mkdirSync(join(inputs, 'small'));
  const small: Record<string, ReturnType<typeof raw>> = {};
  for (let i = 0; i < SMALL_LAYERS; i++) small[`layers.${i}.proj.weight`] = raw([SMALL_WIDTH, SMALL_WIDTH], 70 + i);
  writeFileSync(
    join(inputs, 'small', 'model.safetensors'),
    await serializeSafetensors(small, { metadata: { format: 'pt' } }),
  );
  writeFileSync(join(inputs, 'small', 'config.json'), '{"model_type": "net"}');
  writeFileSync(join(inputs, 'small', 'tokenizer.json'), '{}');
  await writeAdapter(join(inputs, 'small-adapter-old'), 8, 6, SMALL_LAYERS, SMALL_WIDTH);
  await writeAdapter(join(inputs, 'small-adapter-new'), 8, 7, SMALL_LAYERS, SMALL_WIDTH);
  // lora eva's model (a random tiny Llama with a real tokenizer) and text
  await writeTinyLlama(join(inputs, 'tiny-llama'));
  writeFileSync(
    join(inputs, 'eva-data.txt'),
    Array.from(
      { length: 12 },
      (_, i) => `line ${i}: low-rank adapters start from the directions their layer sees.`,
    ).join('\n'),
  );
  writeFileSync(join(inputs, 'notes.txt'), 'a file of the user, beside the inputs');
  for (const e of readdirSync(inputs)) hashesBefore.set(e, hashOf(join(inputs, e)) as string);

  // the old output of each command, and the new one written over it (how long that takes sets the kill moments)
  const calibrated = await pool(
    scenarios.map((s) => async () => {
      const dir = join(root, 'expected', s.name.replace(/\W+/g, '-'));
      mkdirSync(dir, { recursive: true });
      const pristine = join(dir, s.outName);
      const old = await runChild(s.args(pristine, 'old', false));
      if (old.code !== 0) throw new Error(`${s.name} (old output): ${old.err}`);
      const out = join(dir, 'calibration');
      mkdirSync(out);
      linkCopy(pristine, join(out, s.outName));
      const fresh = await runChild(s.args(join(out, s.outName), 'new', true), { mark: s.mark, working: s.working });
      if (fresh.code !== 0) throw new Error(`${s.name} (new output): ${fresh.err}`);
      if (fresh.workingMs === null) throw new Error(`${s.name}: no line matching ${s.working} in ${fresh.err}`);
      expect(readdirSync(out)).toEqual([s.outName]);
      return [
        s.name,
        {
          old: hashOf(pristine),
          new: hashOf(join(out, s.outName)),
          pristine,
          workMs: fresh.ms - (fresh.markMs ?? 0),
          afterWorkingMs: fresh.ms - fresh.workingMs,
        },
      ] as const;
    }),
  );
  for (const [name, e] of calibrated) {
    expect(e.old).not.toBe(e.new);
    expected.set(name, e as Expected);
  }
}, 600_000);

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Every input (and the pristine old outputs trials link from) byte-identical to before. */
function expectInputsUnchanged(): void {
  for (const [e, h] of hashesBefore) expect(hashOf(join(inputs, e)), `input ${e}`).toBe(h);
  for (const [name, e] of expected) expect(hashOf(e.pristine), `old output of ${name}`).toBe(e.old);
}

interface Tally {
  old: number;
  new: number;
  /** SIGKILLs between the two renames of a directory replace (the next run restored the old output). */
  restored: number;
  /** Kills that left temporaries for the next run to remove. */
  leftovers: number;
  /** Kills that stopped the child after it had started its work. */
  killedWhileWorking: number;
}

/**
 * Runs `s` killed with each signal at `trials` seeded moments, over the old output (`existing`) or
 * into a new path. A quarter of each signal's moments (at least one) are timed from the command's
 * `working` line, within 3/4 of what remained of the calibration run after it, so that some kills land
 * while it works however the load of the machine shifts its start-up; the others from its `mark`
 * line, from a little before its work starts to a little after it ends. Returns what went wrong,
 * and where the kills landed.
 */
async function killTrials(
  s: Scenario,
  options: {
    existing: boolean;
    signals: NodeJS.Signals[];
    trials: number;
    seed: number;
    /**
     * Time the kills from the first temporary the writer creates, at seeded moments within this many
     * ms of it, instead of across the calibrated run.
     */
    afterTemporaryMs?: number;
  },
): Promise<{ failures: string[]; tally: Tally }> {
  const want = expected.get(s.name) as Expected;
  const failures: string[] = [];
  const tally: Tally = { old: 0, new: 0, restored: 0, leftovers: 0, killedWhileWorking: 0 };
  const jobs: (() => Promise<void>)[] = [];
  for (const [k, signal] of options.signals.entries()) {
    const next = uniform(options.seed + k);
    const fromWorking = Math.ceil(options.trials / 4);
    for (let i = 0; i < options.trials; i++) {
      const fromTemporary = options.afterTemporaryMs !== undefined;
      const timedFromWorking = !fromTemporary && i < fromWorking;
      // any moment of the command's work (from its `working` line), or of its own run and a little
      // after it (then the new output is complete)
      const afterMs =
        next() *
        (fromTemporary
          ? (options.afterTemporaryMs as number)
          : timedFromWorking
            ? 0.75 * want.afterWorkingMs
            : 1.15 * want.workMs);
      const mark = timedFromWorking ? s.working : s.mark;
      jobs.push(async () => {
        const label = `${signal} #${i} ${afterMs.toFixed(0)} ms after ${fromTemporary ? 'the first temporary' : `'${mark.source}'`}`;
        const dir = join(
          root,
          'trials',
          `${s.name.replace(/\W+/g, '-')}-${options.existing ? 'old' : 'new'}-${signal}-${i}`,
        );
        mkdirSync(dir, { recursive: true });
        const out = join(dir, s.outName);
        if (options.existing) linkCopy(want.pristine, out);
        const run = await runChild(s.args(out, 'new', options.existing), {
          mark,
          kill: { afterMs, signal, ...(fromTemporary ? { fromTemporaryIn: dir } : {}) },
        });
        if (run.code !== null && run.code !== 0) failures.push(`${label}: exit ${run.code}: ${run.err}`);
        if (run.signal && s.working.test(run.err)) tally.killedWhileWorking++;
        const left = readdirSync(dir).filter((e) => e !== s.outName);
        const h = hashOf(out);
        if (h === want.new) tally.new++;
        else if (options.existing && h === want.old) tally.old++;
        else if (!options.existing && h === null) tally.old++;
        else if (h === null && signal === 'SIGKILL') {
          // killed between the two renames of a directory replace: the old output waits beside it
          const aside = left.filter((e) => e.endsWith('.old'));
          if (aside.length !== 1 || hashOf(join(dir, aside[0]!)) !== want.old)
            failures.push(`${label}: no output, and no complete old one beside it (${left.join(', ')})`);
          tally.restored++;
        } else
          failures.push(
            `${label}: the output is neither the old nor the new one (${h === null ? 'missing' : 'mixed'})`,
          );
        if (signal !== 'SIGKILL' && left.length) failures.push(`${label}: ${signal} left ${left.join(', ')}`);
        if (left.some((e) => !TEMP.test(e)))
          failures.push(`${label}: left files of no temporary naming: ${left.join(', ')}`);
        if (left.length) tally.leftovers++;
        await nextRun(s, out);
        const after = readdirSync(dir);
        if (after.join() !== s.outName)
          failures.push(`${label}: after the next run the folder holds ${after.join(', ')}`);
        if (options.existing && ![want.old, want.new].includes(hashOf(out) as string))
          failures.push(`${label}: after the next run the output is neither the old nor the new one`);
        rmSync(dir, { recursive: true, force: true });
      });
    }
  }
  await pool(jobs);
  console.log(
    `${s.name}, ${options.existing ? 'over the old output' : 'into a new path'}: ${JSON.stringify(tally)} (calibrated: ${want.workMs.toFixed(0)} ms after '${s.mark.source}', ${want.afterWorkingMs.toFixed(0)} after '${s.working.source}')`,
  );
  return { failures, tally };
}

describe('killed while replacing an existing output (--force)', () => {
  for (const s of scenarios) {
    it(`${s.name}: SIGINT and SIGKILL at ${TRIALS} random moments each leave the old or the new output, and no temporary after the next run`, async () => {
      const { failures, tally } = await killTrials(s, {
        existing: true,
        signals: ['SIGINT', 'SIGKILL'],
        trials: TRIALS,
        seed: 11,
      });
      expect(failures).toEqual([]);
      // the kills did land while the command worked (else the suite would prove nothing)
      expect(tally.killedWhileWorking).toBeGreaterThan(0);
      expect(tally.leftovers).toBeGreaterThan(0);
      expectInputsUnchanged();
    }, 600_000);
  }

  it('saveAdapter into a new directory: a SIGKILL leaves no directory or the complete one, never weights without a config', async () => {
    const s = scenarios.find((x) => x.name.startsWith('saveAdapter')) as Scenario;
    // across the whole run (most land before the write begins: building the files takes longer than writing them)
    const across = await killTrials(s, {
      existing: false,
      signals: ['SIGKILL'],
      trials: Math.ceil(TRIALS / 4),
      seed: 17,
    });
    // and within a few ms of the temporary directory's creation: mid-write
    const midWrite = await killTrials(s, {
      existing: false,
      signals: ['SIGKILL'],
      trials: Math.ceil(TRIALS / 4),
      seed: 19,
      afterTemporaryMs: 8,
    });
    expect([...across.failures, ...midWrite.failures]).toEqual([]);
    // the kills did land while the temporary was being written (else the test would prove nothing)
    expect(midWrite.tally.leftovers).toBeGreaterThan(0);
  }, 600_000);
});

describe('outputs that are refused before any work', () => {
  it('an existing output without --force, one holding other files, a parent of an input, ".", a read-only folder', async () => {
    // a folder even root cannot write into: chmod'ed for other users; sysfs (which refuses new files) for root
    let readOnly: string | null = null;
    if (process.getuid?.() !== 0) {
      readOnly = join(root, 'read-only');
      mkdirSync(readOnly);
      spawnSync('chmod', ['0555', readOnly]);
    } else if (existsSync('/sys')) {
      try {
        mkdirSync('/sys/lora-probe');
        rmSync('/sys/lora-probe', { recursive: true });
      } catch {
        readOnly = '/sys';
      }
    }
    if (!readOnly) console.warn('no read-only folder here (root, and /sys accepts new entries): that case is left out');
    const jobs: (() => Promise<string[]>)[] = [];
    for (const s of scenarios) {
      const want = expected.get(s.name) as Expected;
      const isSave = s.name.startsWith('saveAdapter');
      // the saveAdapter child takes its input (pathInitialModelForWeightConversion) after --initial
      const withInput = (args: string[]) => (isSave ? [...args, '--initial', s.input()] : args);
      const cases: {
        what: string;
        out: string;
        args: string[];
        cwd?: string;
        code: number;
        message: RegExp;
        setup?: () => void;
        check?: string;
      }[] = [
        {
          what: 'exists, no --force',
          out: join(root, 'refused', s.outName),
          args: s.args(join(root, 'refused', s.outName), 'new', false),
          code: isSave ? 1 : 2,
          message: /exists; choose a new path or pass (--force|\{ force: true \}) to replace it/,
          setup: () => {
            mkdirSync(join(root, 'refused'), { recursive: true });
            linkCopy(want.pristine, join(root, 'refused', s.outName));
          },
          check: want.old,
        },
        {
          what: 'holds files lora did not write, --force',
          out: join(root, 'foreign', s.outName),
          args: s.args(join(root, 'foreign', s.outName), 'new', true),
          code: isSave ? 1 : 2,
          message: s.outName.endsWith('.safetensors')
            ? /is not a safetensors file: lora replaces only a safetensors file it could have written, even when forced/
            : /holds notes\.txt, sub\/(data\.csv)?, which are not part of a (PEFT adapter|model) directory/,
          setup: () => {
            const out = join(root, 'foreign', s.outName);
            mkdirSync(dirname(out), { recursive: true });
            if (s.outName.endsWith('.safetensors')) writeFileSync(out, 'my notes, not weights');
            else {
              mkdirSync(join(out, 'sub'), { recursive: true });
              writeFileSync(join(out, 'notes.txt'), 'mine');
              writeFileSync(join(out, 'sub', 'data.csv'), 'mine');
            }
          },
        },
        {
          what: 'a parent of an input, --force',
          out: inputs,
          args: withInput(s.args(inputs, 'new', true)),
          code: isSave ? 1 : 2,
          message:
            /contains (--base|--adapter|--model|--data|pathInitialModelForWeightConversion) .*: replacing it would remove the input/,
        },
        {
          what: '".", --force',
          out: '.',
          cwd: inputs,
          args: withInput(s.args('.', 'new', true)),
          code: isSave ? 1 : 2,
          message: /\. is the current directory; write into a new sub-directory instead/,
        },
      ];
      if (readOnly)
        cases.push({
          what: 'in a read-only folder',
          out: join(readOnly, s.outName),
          args: s.args(join(readOnly, s.outName), 'new', false),
          code: 1,
          message: /cannot write in .* \(permission denied\)|read-only file system/,
        });
      for (const c of cases)
        jobs.push(async () => {
          c.setup?.();
          const before = c.out === '.' || c.out === inputs ? null : hashOf(c.out);
          const run = await runChild(c.args, { cwd: c.cwd });
          const problems: string[] = [];
          const label = `${s.name}, ${c.what}`;
          if (run.code !== c.code) problems.push(`${label}: exit ${run.code}, expected ${c.code}: ${run.err}`);
          if (!c.message.test(run.err)) problems.push(`${label}: said ${JSON.stringify(run.err)}`);
          // refused before the work: no adapter read, no shard merged, nothing saved
          if (!isSave && s.working.test(run.err)) problems.push(`${label}: the work started before the refusal`);
          if (/^saved /m.test(run.err)) problems.push(`${label}: saved`);
          if (before !== null && hashOf(c.out) !== before) problems.push(`${label}: the existing output changed`);
          if (c.check && hashOf(c.out) !== c.check) problems.push(`${label}: the old output is gone`);
          return problems;
        });
    }
    const problems = (await pool(jobs)).flat();
    expect(problems).toEqual([]);
    expect(readdirSync(inputs).sort()).toEqual([...hashesBefore.keys()].sort());
    for (const d of ['refused', 'foreign']) expect(readdirSync(join(root, d)).filter((e) => TEMP.test(e))).toEqual([]);
    expectInputsUnchanged();
  }, 600_000);
});
