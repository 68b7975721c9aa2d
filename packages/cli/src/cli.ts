import { cp, mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import {
  COMBINATION_TYPES,
  type CombinationType,
  PEFT_KEY_PREFIX,
  adapterTargets,
  combineAdapters,
  mergedModulePaths,
  loraConfigFromJson,
  loraConfigToJson,
  mergeAdapterWeights,
  moduleScaling,
} from '@lora/core';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { loadSafetensors, readSafetensorsFileHeader, rewriteSafetensors } from '@lora/tensor/node';

/** Where the command writes: stdout for results, stderr for progress and errors. */
export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
}

const HELP: Record<string, string> = {
  main: `lora — PEFT LoRA adapters from the command line

Usage:
  lora inspect <adapter dir>                 config, targets, ranks and parameter counts
  lora merge --base <file|dir> --adapter <dir> --out <file|dir> [--adapter-name NAME] [--safe-merge]
                                             merge an adapter into a safetensors checkpoint
  lora combine --adapter <dir> --adapter <dir> ... --weights W1,W2,... --type TYPE --out <dir> [options]
                                             combine adapters into one (PEFT's add_weighted_adapter), no model needed
  lora <command> --help                      help for one command`,
  inspect: `lora inspect <adapter dir>

Reads adapter_config.json and adapter_model.safetensors (PEFT's layout) and prints the config, every
adapted module with its kind, rank, alpha and scaling, and the parameter counts.`,
  merge: `lora merge --base <model file or dir> --adapter <adapter dir> --out <file or dir> [options]

Merges the adapter into the base weights by name, as PEFT's merge_and_unload, without building a model:
Linear (and DoRA) and Embedding adapters, rank/alpha patterns, rsLoRA, lora_bias. A directory base may be
sharded (model.safetensors.index.json). Files are streamed: tensors the adapter does not touch are copied
byte for byte, each adapted weight is merged and written back in its own dtype (bf16 stays bf16), so memory
stays near one layer; output is written atomically, and a directory's other files (config.json, tokenizer
files) are copied. Progress goes to stderr.

Options:
  --adapter-name NAME   the sub-folder of a multi-adapter directory (PEFT saves non-default adapters there)
  --safe-merge          refuse to write weights that came out NaN or infinite`,
  combine: `lora combine --adapter <dir> --adapter <dir> ... --weights W1,W2,... [--type TYPE] --out <dir> [options]

Combines PEFT adapters into one, as PEFT's add_weighted_adapter followed by save_pretrained of the new
adapter, from the adapter files alone (no base model): Linear, Embedding, Conv1d and Conv2d modules,
rank/alpha patterns, rsLoRA, fan_in_fan_out. Writes adapter_config.json and adapter_model.safetensors in
PEFT's layout (PeftModel.from_pretrained loads it) into a temporary directory, then moves it into place.

Options:
  --adapter DIR           an adapter directory; repeat for each adapter (one adapter: a linear rescale)
  --weights W1,W2,...     one weight per adapter, in the same order; negative weights subtract (write
                          --weights=-0.5,1 when the first one is negative)
  --type TYPE             ${COMBINATION_TYPES.join(', ')}
                          (default svd). linear, ties, dare_* and magnitude_prune need equal ranks; cat
                          sums the ranks; the *svd types re-decompose the combined update at --svd-rank
  --svd-rank N            rank of the *svd types' result (default: the largest rank of the adapters)
  --svd-clamp Q           clamp the SVD factors to their Q-quantile (0..1)
  --density D             fraction of values kept by ties, magnitude_prune, dare_* and their svd forms (0..1)
  --majority-sign M       total (default) or frequency: how ties elects each entry's sign
  --seed N                seed of dare_*'s random pruning (default 0; PyTorch's masks cannot be reproduced)
  --force                 replace --out if it exists

The pruned svd types (ties_svd, dare_*_svd, magnitude_prune_svd) decompose each full update matrix in
float64 JavaScript: about 20 s per 1024x1024 module, far longer at 4096x4096. svd decomposes through the
adapters' factors and stays fast.`,
};

class UsageError extends Error {}

/**
 * Starts a CPU-side backend: merging is memory-bound, so a GPU adds nothing, and probing one costs
 * time and noise. LORA_BACKEND chooses; otherwise tensorflow (tfjs-node) when installed, then wasm, then cpu.
 */
async function startBackend(): Promise<void> {
  const chosen = process.env.LORA_BACKEND;
  if (chosen) {
    await initBackend(chosen as 'cpu');
    return;
  }
  for (const name of ['tensorflow', 'wasm', 'cpu'] as const) {
    try {
      await initBackend(name);
      return;
    } catch {
      // try the next one
    }
  }
  throw new Error('no backend could start; install @tensorflow/tfjs-backend-cpu');
}

async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() ?? false;
}

/**
 * Fills a temporary directory beside `out`, then moves it into place (replacing `out`): nothing
 * half-written on failure, the temporary directory removed.
 */
async function writeDirAtomic(out: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  try {
    await mkdir(tmp, { recursive: true });
    await fill(tmp);
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

async function readAdapter(dir: string, name?: string) {
  const root = name && name !== 'default' ? join(dir, name) : dir;
  const configPath = join(root, 'adapter_config.json');
  const weightsPath = join(root, 'adapter_model.safetensors');
  if (!(await stat(configPath).catch(() => null)))
    throw new UsageError(
      `${root}: no adapter_config.json (is it a PEFT adapter directory? use --adapter-name for a sub-folder)`,
    );
  const config = loraConfigFromJson(JSON.parse(await readFile(configPath, 'utf8')), { warn: () => undefined });
  if (!(await stat(weightsPath).catch(() => null))) throw new UsageError(`${root}: no adapter_model.safetensors`);
  const { tensors } = await loadSafetensors(weightsPath);
  return { config, tensors, root };
}

async function inspect(args: string[], io: Io): Promise<number> {
  const { positionals, values } = parseArgs({
    args,
    allowPositionals: true,
    options: { help: { type: 'boolean' }, 'adapter-name': { type: 'string' } },
  });
  if (values.help) {
    io.out(HELP.inspect as string);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes one adapter directory; see lora inspect --help');
  await startBackend();
  const { config, tensors, root } = await readAdapter(positionals[0] as string, values['adapter-name']);
  try {
    io.out(`adapter ${root}`);
    io.out(
      `  peft_type LORA, r ${config.r}, lora_alpha ${config.loraAlpha}, rslora ${config.useRslora}, dora ${config.useDora}, dropout ${config.loraDropout}`,
    );
    io.out(
      `  target_modules ${JSON.stringify(config.targetModules)}${config.baseModelNameOrPath ? `, base model ${config.baseModelNameOrPath}` : ''}`,
    );
    let total = 0;
    const targets = adapterTargets(tensors);
    for (const [path, kind] of targets) {
      const { r, alpha, scaling } = moduleScaling(config, path);
      const params = Object.entries(tensors)
        .filter(([k]) => k.startsWith(`${PEFT_KEY_PREFIX}${path}.`))
        .reduce((s, [, t]) => s + t.size, 0);
      total += params;
      io.out(`  ${path}  ${kind}  r ${r}  alpha ${alpha}  scaling ${scaling.toPrecision(4)}  ${params} params`);
    }
    io.out(`  ${targets.size} modules, ${total} parameters in ${Object.keys(tensors).length} tensors`);
    return 0;
  } finally {
    tf.dispose(Object.values(tensors));
  }
}

/**
 * Merges the adapter into one safetensors file, streaming: tensors the adapter does not touch are copied
 * as bytes, each adapted module's weight (and bias, with lora_bias) is read, merged and written back in
 * its own dtype, so memory stays near one module and a bf16 checkpoint stays bf16.
 */
async function mergeFile(
  input: string,
  output: string,
  adapter: { config: ReturnType<typeof loraConfigFromJson>; tensors: Record<string, tf.Tensor> },
  safeMerge: boolean,
  io: Io,
): Promise<{ changed: number }> {
  const modules = mergedModulePaths(adapter.tensors);
  const moduleOf = new Map<string, string>();
  for (const p of modules) for (const k of [`${p}.weight`, `${p}.bias`]) moduleOf.set(k, p);
  const pending = new Map<string, Float32Array>();
  let present: Set<string> | null = null;
  let changed = 0;
  let lastReport = Date.now();
  await rewriteSafetensors(
    input,
    output,
    async (name, file) => {
      present ??= new Set(file.header.entries.map((e) => e.name));
      const ready = pending.get(name);
      if (ready) {
        pending.delete(name);
        return ready;
      }
      const path = moduleOf.get(name);
      if (path === undefined || (name.endsWith('.bias') && !adapter.tensors[`${PEFT_KEY_PREFIX}${path}.lora_B.bias`]))
        return undefined;
      // this module's weight (and bias) as tensors; the adapter's tensors for this module alone
      const base: Record<string, tf.Tensor> = {};
      const own: Record<string, tf.Tensor> = {};
      for (const [k, t] of Object.entries(adapter.tensors)) if (k.startsWith(`${PEFT_KEY_PREFIX}${path}.`)) own[k] = t;
      try {
        for (const k of [`${path}.weight`, `${path}.bias`]) {
          if (!present.has(k)) continue;
          const d = await file.read(k);
          base[k] = tf.tensor(d.values, d.shape, d.dtype);
        }
        const { merged } = await mergeAdapterWeights(base, { config: adapter.config, tensors: own }, { safeMerge });
        for (const [k, t] of Object.entries(merged)) pending.set(k, (await t.data()) as Float32Array);
        tf.dispose(Object.values(merged));
        changed++;
      } finally {
        tf.dispose(Object.values(base));
      }
      const mine = pending.get(name);
      pending.delete(name);
      return mine;
    },
    {
      onProgress: (done, total) => {
        if (Date.now() - lastReport < 2000) return;
        lastReport = Date.now();
        io.err(
          `  ${basename(input)}: ${((100 * done) / total).toFixed(0)}% (${(done / 2 ** 20).toFixed(0)} of ${(total / 2 ** 20).toFixed(0)} MiB)`,
        );
      },
    },
  );
  return { changed };
}

async function merge(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean' },
      base: { type: 'string' },
      adapter: { type: 'string' },
      out: { type: 'string' },
      'adapter-name': { type: 'string' },
      'safe-merge': { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP.merge as string);
    return 0;
  }
  for (const k of ['base', 'adapter', 'out'] as const)
    if (!values[k]) throw new UsageError(`merge needs --${k}; see lora merge --help`);
  const base = values.base as string;
  const out = values.out as string;
  if (resolve(out) === resolve(base))
    throw new UsageError(
      '--out is --base: write the merged model somewhere else (the base is read while the output is written)',
    );
  await startBackend();
  const adapter = await readAdapter(values.adapter as string, values['adapter-name']);
  try {
    const wanted = new Set(mergedModulePaths(adapter.tensors).map((p) => `${p}.weight`));
    const baseIsDir = await isDir(base);
    const files = baseIsDir ? await readdir(base) : [];
    const shards = baseIsDir ? files.filter((f) => f.endsWith('.safetensors')) : [basename(base)];
    const dir = baseIsDir ? base : dirname(base);
    if (shards.length === 0) throw new UsageError(`${base}: no .safetensors files`);
    // every adapted weight must be in the base, checked on the headers before anything is written
    const found = new Set<string>();
    for (const shard of shards)
      for (const e of (await readSafetensorsFileHeader(join(dir, shard))).entries)
        if (wanted.has(e.name)) found.add(e.name);
    if (found.size !== wanted.size)
      throw new UsageError(
        `the base has no ${[...wanted]
          .filter((w) => !found.has(w))
          .slice(0, 3)
          .join(', ')}: is this the adapter's base model?`,
      );
    if (baseIsDir) {
      await writeDirAtomic(out, async (tmp) => {
        for (const [i, shard] of shards.entries()) {
          io.err(`merging ${shard} (${i + 1}/${shards.length})`);
          await mergeFile(join(base, shard), join(tmp, shard), adapter, values['safe-merge'] ?? false, io);
        }
        // the checkpoint's other files and folders (config.json, tokenizer files) come along
        for (const f of files)
          if (!f.endsWith('.safetensors')) await cp(join(base, f), join(tmp, f), { recursive: true });
      });
    } else {
      io.err(`merging ${base}`);
      await mergeFile(base, out, adapter, values['safe-merge'] ?? false, io);
    }
    io.err(`wrote ${out} (${wanted.size} modules merged)`);
    return 0;
  } finally {
    tf.dispose(Object.values(adapter.tensors));
  }
}

/** A number from an option, checked: `what` names the option in the error. */
function numberOption(
  value: string | undefined,
  what: string,
  check: (n: number) => boolean,
  expected: string,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !check(n)) throw new UsageError(`${what} ${JSON.stringify(value)} is not ${expected}`);
  return n;
}

async function combine(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      help: { type: 'boolean' },
      adapter: { type: 'string', multiple: true },
      weights: { type: 'string' },
      type: { type: 'string' },
      'svd-rank': { type: 'string' },
      'svd-clamp': { type: 'string' },
      density: { type: 'string' },
      'majority-sign': { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP.combine as string);
    return 0;
  }
  const dirs = values.adapter ?? [];
  if (dirs.length === 0) throw new UsageError('combine needs --adapter (once per adapter); see lora combine --help');
  if (values.weights === undefined)
    throw new UsageError('combine needs --weights (one per adapter, comma-separated); see lora combine --help');
  if (!values.out) throw new UsageError('combine needs --out; see lora combine --help');
  const weights = values.weights
    .split(',')
    .map((w) => numberOption(w, '--weights value', Number.isFinite, 'a number') as number);
  if (weights.length !== dirs.length)
    throw new UsageError(
      `--weights has ${weights.length} value(s) for ${dirs.length} adapter(s); give one weight per --adapter`,
    );
  const type = (values.type ?? 'svd') as CombinationType;
  if (!COMBINATION_TYPES.includes(type))
    throw new UsageError(`unknown --type '${type}'; types are ${COMBINATION_TYPES.join(', ')}`);
  const majority = values['majority-sign'];
  if (majority !== undefined && majority !== 'total' && majority !== 'frequency')
    throw new UsageError(`--majority-sign '${majority}' is not total or frequency`);
  const options = {
    combinationType: type,
    svdRank: numberOption(values['svd-rank'], '--svd-rank', (n) => Number.isInteger(n) && n > 0, 'a positive integer'),
    svdClamp: numberOption(values['svd-clamp'], '--svd-clamp', (n) => n >= 0 && n <= 1, 'a quantile in [0, 1]'),
    density: numberOption(values.density, '--density', (n) => n >= 0 && n <= 1, 'a fraction in [0, 1]'),
    majoritySignMethod: majority as 'total' | 'frequency' | undefined,
    seed: numberOption(values.seed, '--seed', Number.isSafeInteger, 'an integer'),
  };
  const out = resolve(values.out);
  if (dirs.some((d) => resolve(d) === out))
    throw new UsageError(`--out ${values.out} is one of the --adapter directories; write the combination elsewhere`);
  if ((await stat(out).catch(() => null)) && !values.force)
    throw new UsageError(`--out ${values.out} exists; choose a new directory or pass --force to replace it`);
  await startBackend();
  const adapters: Awaited<ReturnType<typeof readAdapter>>[] = [];
  try {
    for (const [i, dir] of dirs.entries()) {
      adapters.push(await readAdapter(dir));
      io.err(`read ${dir} (${i + 1}/${dirs.length})`);
    }
    const mix = await combineAdapters(adapters, weights, {
      ...options,
      names: dirs,
      warn: (m) => io.err(`warning: ${m}`),
      onProgress: (done, total, path) => io.err(`combined module ${done}/${total} ${path}`),
    });
    try {
      await writeDirAtomic(out, async (tmp) => {
        await writeFile(
          join(tmp, 'adapter_model.safetensors'),
          await serializeSafetensors(mix.tensors, { metadata: { format: 'pt' } }),
        );
        await writeFile(join(tmp, 'adapter_config.json'), loraConfigToJson(mix.config));
      });
      io.err(
        `wrote ${values.out} (${dirs.length === 1 ? 'linear' : type}, r ${mix.config.r}, ${Object.keys(mix.tensors).length / 2} modules)`,
      );
    } finally {
      tf.dispose(Object.values(mix.tensors));
    }
    return 0;
  } finally {
    tf.dispose(adapters.flatMap((a) => Object.values(a.tensors)));
  }
}

/**
 * Runs the `lora` command with `argv` (without the node and script paths). Returns the exit code;
 * any error is one line on stderr and a non-zero code.
 *
 * @example
 * ```ts
 * process.exitCode = await runCli(['inspect', 'my-adapter'], { out: console.log, err: console.error });
 * ```
 */
export async function runCli(argv: string[], io: Io): Promise<number> {
  const [command, ...rest] = argv;
  try {
    if (!command || command === '--help' || command === '-h') {
      io.out(HELP.main as string);
      return command ? 0 : 2;
    }
    if (command === 'inspect') return await inspect(rest, io);
    if (command === 'merge') return await merge(rest, io);
    if (command === 'combine') return await combine(rest, io);
    throw new UsageError(`unknown command '${command}'; commands are inspect, merge and combine (lora --help)`);
  } catch (e) {
    io.err(`lora ${command ?? ''}: ${(e as Error).message.split('\n')[0]}`);
    return e instanceof UsageError ? 2 : 1;
  }
}
