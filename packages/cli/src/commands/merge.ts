import { cp, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import {
  PEFT_SUFFIX,
  adapterTargets,
  type loraConfigFromJson,
  loraModuleOfKey,
  mergeAdapterWeights,
  mergedModulePaths,
  moduleTensors,
  peftKey,
  replacedBaseWeights,
  resolveTargetPaths,
} from '@lora/core';
import { outputKinds, readSafetensorsFileHeader, rewriteSafetensors } from '@lora/tensor/node';
import {
  type AdapterOnDisk,
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  checkpointShards,
  isDir,
  parseCommandArgs,
  prepareOut,
  readAdapter,
  sizeOf,
  startBackend,
} from '../shared';

const HELP = `lora merge --base <model file or dir> --adapter <adapter dir> --out <file or dir> [options]

Merges the adapter into the base weights by name, as PEFT's merge_and_unload, without building a model:
Linear (and DoRA) and Embedding adapters, rank/alpha patterns, rsLoRA, lora_bias. The modules merged are
those the adapter's target_modules (exclude_modules, layers_to_transform) select in the base, as when
PEFT loads it; adapter tensors for other modules are ignored with a warning. A directory base is a
Hugging Face checkpoint: model.safetensors.index.json and its shards, or model.safetensors; its other
files are copied as they are, and --out is then a directory too. Files are streamed: tensors the adapter does not touch are copied
byte for byte, each adapted weight is merged and written back in its own dtype (bf16 stays bf16), so memory
stays near one layer. Progress goes to stderr.

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
  adapter: { config: ReturnType<typeof loraConfigFromJson>; tensors: Record<string, tf.Tensor>; file?: string },
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
  // modules_to_save copies, trained biases, saved embedding layers: written in place of the base's
  const replaced = replacedBaseWeights(adapter.tensors);
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
      const replacement = replaced.get(name);
      if (path === undefined && replacement !== undefined) {
        const t = adapter.tensors[replacement] as tf.Tensor;
        const entry = file.header.entries.find((e) => e.name === name);
        if (entry && entry.shape.join(',') !== t.shape.join(','))
          throw new UsageError(
            `the adapter's ${replacement} is [${t.shape.join(', ')}] but the base's ${name} is [${entry.shape.join(', ')}]: is this the adapter's base model?`,
          );
        const values = (await t.data()) as Float32Array;
        checkFinite(name, values);
        changed++;
        return values;
      }
      if (
        path === undefined ||
        (name.endsWith('.bias') && !adapter.tensors[peftKey(path, PEFT_SUFFIX.loraBBias)] && replacement === undefined)
      )
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
        // checked here rather than by mergeAdapterWeights' safeMerge: the values are read anyway
        const { merged } = mergeAdapterWeights(base, {
          config: adapter.config,
          tensors: own,
          ...(adapter.file ? { file: adapter.file } : {}),
        });
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
  const { values } = parseCommandArgs({
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
  if (baseIsDir && out.endsWith('.safetensors'))
    throw new UsageError(
      `--base ${base} is a checkpoint directory, so --out must be a directory (it gets the shards, the index and the other files); to merge only the weights file, pass --base ${join(base, 'model.safetensors')}`,
    );
  const dir = baseIsDir ? base : dirname(base);
  const shards = baseIsDir ? await checkpointShards(base) : [basename(base)];
  // the base's module paths, from the headers (nothing is read or written before every check passed)
  const headers = new Map<string, Set<string>>();
  for (const shard of shards)
    headers.set(shard, new Set((await readSafetensorsFileHeader(join(dir, shard))).entries.map((e) => e.name)));
  const others = baseIsDir ? (await readdir(base)).filter((f) => !shards.includes(f)) : [];
  // every check on --out (and its free space: the base's size) before the work
  const output = await prepareOut(
    out,
    {
      kind: baseIsDir ? outputKinds.modelDirectory({ alsoOwns: others }) : outputKinds.safetensorsFile,
      force: values.force ?? false,
      inputs: [
        { path: base, label: '--base' },
        { path: values.adapter as string, label: '--adapter' },
      ],
      bytesNeeded: baseIsDir ? await sizeOf(base) : (await stat(base)).size,
    },
    io,
  );
  let read: AdapterOnDisk | undefined;
  try {
    await startBackend(io);
    read = await readAdapter(values.adapter as string, values['adapter-name'], io);
    const names = [...headers.values()].flatMap((h) => [...h]);
    const adapter = selectTargeted(read, names, io);
    const wanted = new Set([
      ...mergedModulePaths(adapter.tensors).map((p) => `${p}.weight`),
      ...replacedBaseWeights(adapter.tensors).keys(),
    ]);
    const found = new Set(names.filter((n) => wanted.has(n)));
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
      // the checkpoint's other files and folders (config.json, tokenizer files, the index) come along
      for (const f of others) await cp(join(base, f), join(output.target, f), { recursive: true });
    } else {
      io.err(`merging ${base}`);
      await mergeFile(base, output.target, adapter, safeMerge, io);
    }
    await output.commit();
    const modulesMerged = mergedModulePaths(adapter.tensors).length;
    const weightsReplaced = wanted.size - modulesMerged;
    io.err(
      `wrote ${out} (${modulesMerged} modules merged${weightsReplaced ? `, ${weightsReplaced} weights replaced by the adapter's (modules_to_save, trained biases, saved embeddings)` : ''}${output.replaces ? ', the old output replaced' : ''})`,
    );
    return 0;
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
    if (read) tf.dispose(Object.values(read.tensors));
  }
}

/**
 * The adapter as PEFT would load it onto this base: only the modules its config targets among the base's
 * (PEFT's error when it targets none of them), the file's other LoRA modules dropped with a warning.
 */
function selectTargeted(adapter: AdapterOnDisk, baseNames: string[], io: Io): AdapterOnDisk {
  const { config, tensors } = adapter;
  const inFile = [...adapterTargets(tensors).keys()];
  if (typeof config.targetModules === 'string' && config.targetModules.toLowerCase() === 'all-linear') return adapter;
  const paths = [...new Set(baseNames.map((n) => n.split('.').slice(0, -1).join('.')))];
  const targeted = new Set(resolveTargetPaths(paths, config).targeted);
  const ignored = inFile.filter((p) => !targeted.has(p));
  if (ignored.length === 0) return adapter;
  io.err(
    `warning: the adapter holds LoRA weights for ${ignored.length} module(s) its target_modules do not select (${ignored.slice(0, 3).join(', ')}${ignored.length > 3 ? ', …' : ''}); they are not merged, as PEFT does not load them`,
  );
  const drop = new Set(ignored);
  const kept = Object.fromEntries(Object.entries(tensors).filter(([k]) => !drop.has(loraModuleOfKey(k) ?? '')));
  return { ...adapter, tensors: kept };
}

/** `lora merge`. */
export const mergeCommand: Command = {
  name: 'merge',
  usage: `lora merge --base <file|dir> --adapter <dir> --out <file|dir> [--force] [--adapter-name NAME] [--no-safe-merge]
                                             merge an adapter into a safetensors checkpoint`,
  help: HELP,
  run: merge,
};
