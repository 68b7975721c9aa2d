import { copyFile, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { adapterTargets } from '@lora/core';
import { type RawWeight, reduceIntruderTensors } from '@lora/intruders';
import { type ByteSource, type SafetensorsEntry, decodeEntry, readSafetensorsHeaderFrom } from '@lora/tensor';
import { openFileBytes, rewriteSafetensors } from '@lora/tensor/node';
import {
  type Command,
  type Io,
  UsageError,
  checkpointShards,
  isDir,
  numberOption,
  parseCommandArgs,
  readAdapter,
  startBackend,
  writeDirAtomic,
} from '../shared';

const HELP = `lora reduce-intruders --base <model file or dir> --adapter <adapter dir> --out <dir> [options]

Intruder-dimension reduction ("LoRA vs Full Fine-tuning: an Illusion of Equivalence", arXiv 2410.21228),
as PEFT 0.21's reduce_intruder_dimension, on files and without building a model: for each module the
adapter changes, the leading --top-k left singular vectors of W + ΔW whose largest |cosine| with W's
are below --epsilon are intruders; each one's singular value is scaled by --lambda, and the result is
split back into rank-r factors. --out gets the reduced adapter in PEFT's layout (the old
adapter_config.json, adapter_model.safetensors with the new factors in the old dtypes; every other
tensor copied byte for byte), written atomically. Base weights are read one at a time (memory stays
near one layer). Prints PEFT's lines ("<module>: Intruders: N") on stdout, progress on stderr.

Options:
  --top-k N            leading directions examined (default 10)
  --epsilon X          cosine threshold below which a direction is an intruder (default 0.5)
  --lambda X           fraction of each intruder direction kept: 0 removes it, 1 keeps it (default 0.75)
  --adapter-name NAME  the sub-folder of a multi-adapter directory (PEFT saves non-default adapters there)
  --force              replace --out if it exists`;

/** The base checkpoint's tensors by name, read one at a time from its file or shards. */
async function openCheckpoint(base: string) {
  const baseIsDir = await isDir(base);
  const dir = baseIsDir ? base : dirname(base);
  const shards = baseIsDir ? await checkpointShards(base) : [basename(base)];
  const where = new Map<string, { source: ByteSource; entry: SafetensorsEntry }>();
  const sources: ByteSource[] = [];
  try {
    for (const shard of shards) {
      const source = await openFileBytes(join(dir, shard));
      sources.push(source);
      for (const entry of (await readSafetensorsHeaderFrom(source)).entries) where.set(entry.name, { source, entry });
    }
  } catch (e) {
    await Promise.all(sources.map((s) => s.close()));
    throw e;
  }
  return {
    has: (name: string) => where.has(name),
    async read(name: string): Promise<RawWeight | undefined> {
      const found = where.get(name);
      if (!found) return undefined;
      const { source, entry } = found;
      const bytes = await source.read(entry.begin, entry.end);
      const decoded = decodeEntry(bytes, { ...entry, begin: 0, end: bytes.length }, source.label);
      if (!(decoded.values instanceof Float32Array))
        throw new UsageError(`${source.label}: '${name}' is ${entry.dtype}, not a floating-point weight`);
      return { values: decoded.values, shape: decoded.shape };
    },
    close: () => Promise.all(sources.map((s) => s.close())),
  };
}

async function reduceIntruders(args: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs({
    args,
    options: {
      help: { type: 'boolean' },
      base: { type: 'string' },
      adapter: { type: 'string' },
      out: { type: 'string' },
      'adapter-name': { type: 'string' },
      'top-k': { type: 'string' },
      epsilon: { type: 'string' },
      lambda: { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  for (const k of ['base', 'adapter', 'out'] as const)
    if (!values[k]) throw new UsageError(`reduce-intruders needs --${k}; see lora reduce-intruders --help`);
  const topK = numberOption(values['top-k'], '--top-k', (n) => Number.isInteger(n) && n > 0, 'a positive integer');
  const thresholdEpsilon = numberOption(values.epsilon, '--epsilon', Number.isFinite, 'a number');
  const mitigationLambda = numberOption(values.lambda, '--lambda', Number.isFinite, 'a number');
  const out = values.out as string;
  const adapterDir = values.adapter as string;
  for (const [input, flag] of [
    [values.base as string, '--base'],
    [adapterDir, '--adapter'],
  ] as const) {
    const inside = relative(resolve(input), resolve(out));
    if (inside === '' || (!inside.startsWith('..') && !inside.startsWith('/')))
      throw new UsageError(
        `--out ${inside === '' ? 'is' : 'is inside'} ${flag}: write the reduced adapter somewhere else (${flag} is read while it is written)`,
      );
  }
  if ((await stat(out).catch(() => null)) && !values.force)
    throw new UsageError(`--out ${out} exists; choose a new directory or pass --force to replace it`);
  const checkpoint = await openCheckpoint(values.base as string);
  try {
    const adapter = await readAdapter(adapterDir, values['adapter-name'], io);
    try {
      // every weight the adapter needs is in the base before any work
      const missing = [...adapterTargets(adapter.tensors).keys()].filter((p) => !checkpoint.has(`${p}.weight`));
      if (missing.length)
        throw new UsageError(
          `the base has no ${missing
            .slice(0, 3)
            .map((p) => `${p}.weight`)
            .join(', ')}: is this the adapter's base model?`,
        );
      await startBackend(io);
      let lastReport = Date.now();
      const { tensors, layers } = await reduceIntruderTensors(adapter, (name) => checkpoint.read(name), {
        ...(topK !== undefined ? { topK } : {}),
        ...(thresholdEpsilon !== undefined ? { thresholdEpsilon } : {}),
        ...(mitigationLambda !== undefined ? { mitigationLambda } : {}),
        loggingSink: io.out,
        onProgress: (done, total) => {
          if (Date.now() - lastReport < 2000 && done < total) return;
          lastReport = Date.now();
          io.err(`  ${done}/${total} modules`);
        },
      });
      try {
        const replacements = new Map<string, Float32Array>();
        for (const [k, t] of Object.entries(tensors)) replacements.set(k, (await t.data()) as Float32Array);
        await writeDirAtomic(out, async (tmp) => {
          await copyFile(join(adapter.root, 'adapter_config.json'), join(tmp, 'adapter_config.json'));
          await rewriteSafetensors(adapter.file, join(tmp, 'adapter_model.safetensors'), async (name) =>
            replacements.get(name),
          );
        });
      } finally {
        tf.dispose(Object.values(tensors));
      }
      const changed = layers.filter((l) => l.intruders.length).length;
      const total = layers.reduce((n, l) => n + l.intruders.length, 0);
      io.err(`wrote ${out} (${changed} of ${layers.length} modules changed, ${total} intruder directions scaled)`);
      return 0;
    } finally {
      tf.dispose(Object.values(adapter.tensors));
    }
  } finally {
    await checkpoint.close();
  }
}

/** `lora reduce-intruders`. */
export const reduceIntrudersCommand: Command = {
  name: 'reduce-intruders',
  usage: `lora reduce-intruders --base <file|dir> --adapter <dir> --out <dir> [--top-k N] [--epsilon X] [--lambda X]
                                             scale down an adapter's intruder dimensions (PEFT's reduce_intruder_dimension)`,
  help: HELP,
  run: reduceIntruders,
};
