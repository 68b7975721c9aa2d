import { cp, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { PEFT_KEY_PREFIX, type loraConfigFromJson, mergeAdapterWeights, mergedModulePaths } from '@lora/core';
import { outputKinds, readSafetensorsFileHeader, rewriteSafetensors } from '@lora/tensor/node';
import {
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  isDir,
  prepareOut,
  readAdapter,
  sizeOf,
  startBackend,
} from '../shared';

const HELP = `lora merge --base <model file or dir> --adapter <adapter dir> --out <file or dir> [options]

Merges the adapter into the base weights by name, as PEFT's merge_and_unload, without building a model:
Linear (and DoRA) and Embedding adapters, rank/alpha patterns, rsLoRA, lora_bias. A directory base may be
sharded (model.safetensors.index.json). Files are streamed: tensors the adapter does not touch are copied
byte for byte, each adapted weight is merged and written back in its own dtype (bf16 stays bf16), so memory
stays near one layer, and a directory's other files (config.json, tokenizer files) are copied. Progress
goes to stderr.

Options:
  --adapter-name NAME   the sub-folder of a multi-adapter directory (PEFT saves non-default adapters there)
  --force               replace an existing --out of the same kind (see Output below)
  --no-safe-merge       write weights that came out NaN or infinite, with a warning naming each module.
                        By default (--safe-merge) such a merge is refused and nothing is written: unlike
                        PEFT's merge_and_unload (safe_merge off), because the command reads every merged
                        value anyway, so the check costs only a scan, and a broken model is no output.

${OUTPUT_HELP}`;

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
  /** Stops on (or, without safeMerge, warns about) a merged tensor with NaN or infinite values. */
  const checkFinite = (key: string, values: Float32Array) => {
    let bad = 0;
    for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i] as number)) bad++;
    if (bad === 0) return;
    const what = `${bad} of the ${values.length} values of ${key} came out NaN or infinite after merging: the adapter seems to be broken`;
    if (safeMerge) throw new Error(`${what}; nothing was written (--no-safe-merge writes it anyway)`);
    io.err(`warning: ${what}`);
  };
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
        // checked here rather than by mergeAdapterWeights' safeMerge: the values are read anyway
        const { merged } = mergeAdapterWeights(base, { config: adapter.config, tensors: own });
        try {
          for (const [k, t] of Object.entries(merged)) {
            const values = (await t.data()) as Float32Array;
            checkFinite(k, values);
            pending.set(k, values);
          }
        } finally {
          tf.dispose(Object.values(merged));
        }
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
      'safe-merge': { type: 'boolean', default: true },
      force: { type: 'boolean' },
    },
    allowNegative: true,
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  for (const k of ['base', 'adapter', 'out'] as const)
    if (!values[k]) throw new UsageError(`merge needs --${k}; see lora merge --help`);
  const base = values.base as string;
  const out = values.out as string;
  const safeMerge = values['safe-merge'] as boolean;
  const baseIsDir = await isDir(base);
  const files = baseIsDir ? await readdir(base) : [];
  const shards = baseIsDir ? files.filter((f) => f.endsWith('.safetensors')) : [basename(base)];
  const dir = baseIsDir ? base : dirname(base);
  if (!baseIsDir && !(await stat(base).catch(() => null))) throw new UsageError(`--base ${base} does not exist`);
  if (shards.length === 0) throw new UsageError(`${base}: no .safetensors files`);
  const others = files.filter((f) => !f.endsWith('.safetensors'));
  // every check on --out (and its free space: the base's size) before any work
  const output = await prepareOut(
    out,
    {
      kind: baseIsDir ? outputKinds.modelDirectory({ alsoOwns: others }) : outputKinds.safetensorsFile,
      force: values.force ?? false,
      inputs: [
        { path: base, label: '--base' },
        { path: values.adapter as string, label: '--adapter' },
      ],
      bytesNeeded: await sizeOf(base),
    },
    io,
  );
  let adapter: Awaited<ReturnType<typeof readAdapter>> | undefined;
  try {
    await startBackend();
    adapter = await readAdapter(values.adapter as string, values['adapter-name']);
    const wanted = new Set(mergedModulePaths(adapter.tensors).map((p) => `${p}.weight`));
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
      for (const [i, shard] of shards.entries()) {
        io.err(`merging ${shard} (${i + 1}/${shards.length})`);
        await mergeFile(join(base, shard), join(output.target, shard), adapter, safeMerge, io);
      }
      // the checkpoint's other files and folders (config.json, tokenizer files) come along
      for (const f of others) await cp(join(base, f), join(output.target, f), { recursive: true });
    } else {
      io.err(`merging ${base}`);
      await mergeFile(base, output.target, adapter, safeMerge, io);
    }
    await output.commit();
    io.err(`wrote ${out} (${wanted.size} modules merged${output.replaces ? ', the old output replaced' : ''})`);
    return 0;
  } finally {
    await output.abort();
    if (adapter) tf.dispose(Object.values(adapter.tensors));
  }
}

/** `lora merge`. */
export const mergeCommand: Command = {
  name: 'merge',
  usage: `lora merge --base <file|dir> --adapter <dir> --out <file|dir> [--force] [--adapter-name NAME] [--no-safe-merge]
                                             merge an adapter into a safetensors checkpoint`,
  help: HELP,
  run: merge,
};
