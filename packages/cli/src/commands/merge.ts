import { cp, readdir } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import {
  PEFT_SUFFIX,
  type loraConfigFromJson,
  mergeAdapterWeights,
  mergedModulePaths,
  moduleTensors,
  peftKey,
} from '@lora/core';
import { readSafetensorsFileHeader, rewriteSafetensors } from '@lora/tensor/node';
import { type Command, type Io, UsageError, isDir, readAdapter, startBackend, writeDirAtomic } from '../shared';

const HELP = `lora merge --base <model file or dir> --adapter <adapter dir> --out <file or dir> [options]

Merges the adapter into the base weights by name, as PEFT's merge_and_unload, without building a model:
Linear (and DoRA) and Embedding adapters, rank/alpha patterns, rsLoRA, lora_bias. A directory base may be
sharded (model.safetensors.index.json). Files are streamed: tensors the adapter does not touch are copied
byte for byte, each adapted weight is merged and written back in its own dtype (bf16 stays bf16), so memory
stays near one layer; output is written atomically, and a directory's other files (config.json, tokenizer
files) are copied. Progress goes to stderr.

Options:
  --adapter-name NAME   the sub-folder of a multi-adapter directory (PEFT saves non-default adapters there)
  --safe-merge          refuse to write weights that came out NaN or infinite`;

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
      if (path === undefined || (name.endsWith('.bias') && !adapter.tensors[peftKey(path, PEFT_SUFFIX.loraBBias)]))
        return undefined;
      // this module's weight (and bias) as tensors; the adapter's tensors for this module alone
      const base: Record<string, tf.Tensor> = {};
      const own = moduleTensors(adapter.tensors, path);
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
    io.out(HELP);
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

/** `lora merge`. */
export const mergeCommand: Command = {
  name: 'merge',
  usage: `lora merge --base <file|dir> --adapter <dir> --out <file|dir> [--adapter-name NAME] [--safe-merge]
                                             merge an adapter into a safetensors checkpoint`,
  help: HELP,
  run: merge,
};
