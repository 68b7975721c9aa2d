import { copyFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { adapterTargets } from '@lora/core';
import { type RawWeight, reduceIntruderTensors } from '@lora/intruders';
import { type ByteSource, type SafetensorsEntry, decodeEntry, readSafetensorsHeaderFrom } from '@lora/tensor';
import { openFileBytes, outputKinds, rewriteSafetensors } from '@lora/tensor/node';
import {
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  checkpointShards,
  isDir,
  numberOption,
  parseCommandArgs,
  prepareOut,
  readAdapter,
  sizeOf,
  startBackend,
} from '../shared';

const HELP = `lora reduce-intruders --base <model file or dir> --adapter <adapter dir> --out <dir> [options]

Intruder-dimension reduction ("LoRA vs Full Fine-tuning: an Illusion of Equivalence", arXiv 2410.21228),
as PEFT 0.21's reduce_intruder_dimension, on files and without building a model: for each module the
adapter changes, the leading --top-k left singular vectors of W + ΔW whose largest |cosine| with W's
are below --epsilon are intruders; each one's singular value is scaled by --lambda, and the result is
split back into rank-r factors. --out gets the reduced adapter in PEFT's layout (the old
adapter_config.json, adapter_model.safetensors with the new factors in the old dtypes; every other
tensor copied byte for byte). Base weights are read one at a time (memory stays near one layer).
Prints PEFT's lines ("<module>: Intruders: N") on stdout, progress on stderr.

Options:
  --top-k N            leading directions examined (default 10)
  --epsilon X          cosine threshold below which a direction is an intruder (default 0.5)
  --lambda X           fraction of each intruder direction kept: 0 removes it, 1 keeps it (default 0.75)
  --adapter-name NAME  the sub-folder of a multi-adapter directory (PEFT saves non-default adapters there)
  --force              replace an existing --out that is a PEFT adapter directory (see Output below)

${OUTPUT_HELP}`;

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
  // every check on --out (and its free space: the adapter's size) before anything is read
  const output = await prepareOut(
    out,
    {
      kind: outputKinds.adapterDirectory,
      force: values.force ?? false,
      inputs: [
        { path: values.base as string, label: '--base' },
        { path: adapterDir, label: '--adapter' },
      ],
      bytesNeeded: await sizeOf(adapterDir),
    },
    io,
  );
  try {
    return await reduceInto(output, values, { topK, thresholdEpsilon, mitigationLambda }, io);
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
  }
}

async function reduceInto(
  output: Awaited<ReturnType<typeof prepareOut>>,
  values: { base?: string; adapter?: string; out?: string; 'adapter-name'?: string },
  settings: { topK?: number; thresholdEpsilon?: number; mitigationLambda?: number },
  io: Io,
): Promise<number> {
  const { topK, thresholdEpsilon, mitigationLambda } = settings;
  const out = values.out as string;
  const adapterDir = values.adapter as string;
  const checkpoint = await openCheckpoint(values.base as string);
  try {
    // the backend before the adapter's tensors: reading them makes tensors
    await startBackend(io);
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
      io.err(
        `reducing intruder dimensions of ${adapterTargets(adapter.tensors).size} modules of ${adapterDir}: top-k ${topK ?? 10}, epsilon ${thresholdEpsilon ?? 0.5}, lambda ${mitigationLambda ?? 0.75}`,
      );
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
        await copyFile(join(adapter.root, 'adapter_config.json'), join(output.target, 'adapter_config.json'));
        await rewriteSafetensors(adapter.file, join(output.target, 'adapter_model.safetensors'), async (name) =>
          replacements.get(name),
        );
        await output.commit();
      } finally {
        tf.dispose(Object.values(tensors));
      }
      const changed = layers.filter((l) => l.intruders.length).length;
      const total = layers.reduce((n, l) => n + l.intruders.length, 0);
      io.err(
        `wrote ${out} (${changed} of ${layers.length} modules changed, ${total} intruder directions scaled${output.replaces ? ', the old output replaced' : ''})`,
      );
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
