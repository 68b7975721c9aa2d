import { mkdir, readFile, readdir, rename, rm, stat, copyFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { adapterTargets, loraConfigFromJson, loraScaling, mergeAdapterWeights, patternKey } from '@lora/core';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { rewriteSafetensors } from '@lora/tensor/node';

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

async function readAdapter(dir: string, name?: string) {
  const root = name && name !== 'default' ? join(dir, name) : dir;
  const configPath = join(root, 'adapter_config.json');
  const weightsPath = join(root, 'adapter_model.safetensors');
  if (!(await stat(configPath).catch(() => null))) throw new UsageError(`${root}: no adapter_config.json (is it a PEFT adapter directory? use --adapter-name for a sub-folder)`);
  const config = loraConfigFromJson(JSON.parse(await readFile(configPath, 'utf8')), { warn: () => undefined });
  const bytes = await readFile(weightsPath).catch(() => {
    throw new UsageError(`${root}: no adapter_model.safetensors`);
  });
  const { tensors } = parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), { file: weightsPath });
  return { config, tensors, root };
}

async function inspect(args: string[], io: Io): Promise<number> {
  const { positionals, values } = parseArgs({ args, allowPositionals: true, options: { help: { type: 'boolean' }, 'adapter-name': { type: 'string' } } });
  if (values.help) {
    io.out(HELP.inspect as string);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes one adapter directory; see lora inspect --help');
  await startBackend();
  const { config, tensors, root } = await readAdapter(positionals[0] as string, values['adapter-name']);
  try {
    io.out(`adapter ${root}`);
    io.out(`  peft_type LORA, r ${config.r}, lora_alpha ${config.loraAlpha}, rslora ${config.useRslora}, dora ${config.useDora}, dropout ${config.loraDropout}`);
    io.out(`  target_modules ${JSON.stringify(config.targetModules)}${config.baseModelNameOrPath ? `, base model ${config.baseModelNameOrPath}` : ''}`);
    let total = 0;
    const targets = adapterTargets(tensors);
    for (const [path, kind] of targets) {
      const rKey = patternKey(Object.keys(config.rankPattern), path);
      const aKey = patternKey(Object.keys(config.alphaPattern), path);
      const r = rKey === undefined ? config.r : (config.rankPattern[rKey] as number);
      const alpha = aKey === undefined ? config.loraAlpha : (config.alphaPattern[aKey] as number);
      const params = Object.entries(tensors).filter(([k]) => k.startsWith(`base_model.model.${path}.`)).reduce((s, [, t]) => s + t.size, 0);
      total += params;
      io.out(`  ${path}  ${kind}  r ${r}  alpha ${alpha}  scaling ${loraScaling(alpha, r, config.useRslora).toPrecision(4)}  ${params} params`);
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
async function mergeFile(input: string, output: string, adapter: { config: ReturnType<typeof loraConfigFromJson>; tensors: Record<string, tf.Tensor> }, safeMerge: boolean, io: Io): Promise<{ changed: number; missing: string[] }> {
  const modules = [...adapterTargets(adapter.tensors).keys()];
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
      if (path === undefined || (name.endsWith('.bias') && !adapter.tensors[`base_model.model.${path}.lora_B.bias`])) return undefined;
      // this module's weight (and bias) as tensors; the adapter's tensors for this module alone
      const base: Record<string, tf.Tensor> = {};
      const own: Record<string, tf.Tensor> = {};
      for (const [k, t] of Object.entries(adapter.tensors)) if (k.startsWith(`base_model.model.${path}.`)) own[k] = t;
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
        io.err(`  ${basename(input)}: ${((100 * done) / total).toFixed(0)}% (${(done / 2 ** 20).toFixed(0)} of ${(total / 2 ** 20).toFixed(0)} MiB)`);
      },
    },
  );
  const found = present ?? new Set<string>();
  return { changed, missing: modules.map((p) => `${p}.weight`).filter((k) => !found.has(k)) };
}

async function merge(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { help: { type: 'boolean' }, base: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, 'adapter-name': { type: 'string' }, 'safe-merge': { type: 'boolean' } },
  });
  if (values.help) {
    io.out(HELP.merge as string);
    return 0;
  }
  for (const k of ['base', 'adapter', 'out'] as const) if (!values[k]) throw new UsageError(`merge needs --${k}; see lora merge --help`);
  const base = values.base as string;
  const out = values.out as string;
  await startBackend();
  const adapter = await readAdapter(values.adapter as string, values['adapter-name']);
  try {
    const wanted = new Set([...adapterTargets(adapter.tensors).keys()].map((p) => `${p}.weight`));
    const found = new Set<string>();
    if (await isDir(base)) {
      const files = await readdir(base);
      const shards = files.filter((f) => f.endsWith('.safetensors'));
      if (shards.length === 0) throw new UsageError(`${base}: no .safetensors files`);
      // write into a temporary directory, then move it into place: no half-merged checkpoint on failure
      const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
      await rm(tmp, { recursive: true, force: true });
      await mkdir(tmp, { recursive: true });
      try {
        for (const [i, shard] of shards.entries()) {
          io.err(`merging ${shard} (${i + 1}/${shards.length})`);
          const { missing } = await mergeFile(join(base, shard), join(tmp, shard), adapter, values['safe-merge'] ?? false, io);
          for (const w of wanted) if (!missing.includes(w)) found.add(w);
        }
        for (const f of files) if (!f.endsWith('.safetensors') && !(await isDir(join(base, f)))) await copyFile(join(base, f), join(tmp, f));
        if (found.size !== wanted.size) throw new UsageError(`the base has no ${[...wanted].filter((w) => !found.has(w)).slice(0, 3).join(', ')}: is this the adapter's base model?`);
        await rm(out, { recursive: true, force: true });
        await rename(tmp, out);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    } else {
      io.err(`merging ${base}`);
      const { missing } = await mergeFile(base, out, adapter, values['safe-merge'] ?? false, io);
      if (missing.length) {
        await rm(out, { force: true });
        throw new UsageError(`the base has no ${missing.slice(0, 3).join(', ')}: is this the adapter's base model?`);
      }
    }
    io.err(`wrote ${out} (${wanted.size} modules merged)`);
    return 0;
  } finally {
    tf.dispose(Object.values(adapter.tensors));
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
    throw new UsageError(`unknown command '${command}'; commands are inspect and merge (lora --help)`);
  } catch (e) {
    io.err(`lora ${command ?? ''}: ${(e as Error).message.split('\n')[0]}`);
    return e instanceof UsageError ? 2 : 1;
  }
}
