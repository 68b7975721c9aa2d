import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { COMBINATION_TYPES, type CombinationType, combineAdapters, loraConfigToJson } from '@lora/core';
import { serializeSafetensors } from '@lora/tensor';
import { outputKinds } from '@lora/tensor/node';
import {
  type AdapterOnDisk,
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  numberOption,
  parseCommandArgs,
  prepareOut,
  readAdapter,
  sizeOf,
  startBackend,
} from '../shared';

const HELP = `lora combine --adapter <dir> --adapter <dir> ... --weights W1,W2,... [--type TYPE] --out <dir> [options]

Combines PEFT adapters into one, as PEFT's add_weighted_adapter followed by save_pretrained of the new
adapter, from the adapter files alone (no base model): Linear, Embedding, Conv1d and Conv2d modules,
rank/alpha patterns, rsLoRA, fan_in_fan_out. Writes adapter_config.json and adapter_model.safetensors in
PEFT's layout (PeftModel.from_pretrained loads it).

Options:
  --adapter DIR           an adapter directory; repeat for each adapter (one adapter: a linear rescale)
  --weights W1,W2,...     one weight per adapter, in the same order; negative weights subtract
                          (--weights -0.5,1)
  --type TYPE             ${COMBINATION_TYPES.join(', ')}
                          (default svd). linear, ties, dare_* and magnitude_prune need equal ranks; cat
                          sums the ranks; the *svd types re-decompose the combined update at --svd-rank
  --svd-rank N            rank of the *svd types' result (default: the largest rank of the adapters)
  --svd-clamp Q           clamp the SVD factors to their Q-quantile (0..1)
  --density D             fraction of values kept by ties, magnitude_prune, dare_* and their svd forms (0..1)
  --majority-sign M       total (default) or frequency: how ties elects each entry's sign
  --seed N                seed of dare_*'s random pruning (default 0; PyTorch's masks cannot be reproduced)
  --force                 replace an existing --out that is a PEFT adapter directory (see Output below)

The pruned svd types (ties_svd, dare_*_svd, magnitude_prune_svd) decompose each full update matrix in
float64 JavaScript: about 20 s per 1024x1024 module, far longer at 4096x4096. svd decomposes through the
adapters' factors and stays fast.

${OUTPUT_HELP}`;

async function combine(args: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs({
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
    io.out(HELP);
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
  const out = values.out;
  // every check on --out before any adapter is read; the inputs' weights bound the output's size (cat sums them)
  let bytesNeeded = 0;
  for (const d of dirs) bytesNeeded += await sizeOf(join(d, 'adapter_model.safetensors'));
  const output = await prepareOut(
    out,
    {
      kind: outputKinds.adapterDirectory,
      force: values.force ?? false,
      inputs: dirs.map((d) => ({ path: d, label: '--adapter' })),
      bytesNeeded,
    },
    io,
  );
  const adapters: AdapterOnDisk[] = [];
  try {
    await startBackend(io);
    for (const [i, dir] of dirs.entries()) {
      adapters.push(await readAdapter(dir, undefined, io));
      io.err(`read ${dir} (${i + 1}/${dirs.length})`);
    }
    const mix = await combineAdapters(adapters, weights, {
      ...options,
      names: dirs,
      warn: (m) => io.err(`warning: ${m}`),
      onProgress: (done, total, path) => io.err(`combined module ${done}/${total} ${path}`),
    });
    try {
      await writeFile(
        join(output.target, 'adapter_model.safetensors'),
        await serializeSafetensors(mix.tensors, { metadata: { format: 'pt' } }),
      );
      await writeFile(join(output.target, 'adapter_config.json'), loraConfigToJson(mix.config));
      await output.commit();
      io.err(
        `wrote ${out} (${dirs.length === 1 ? 'linear' : type}, r ${mix.config.r}, ${Object.keys(mix.tensors).length / 2} modules)`,
      );
    } finally {
      tf.dispose(Object.values(mix.tensors));
    }
    return 0;
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
    tf.dispose(adapters.flatMap((a) => Object.values(a.tensors)));
  }
}

/** `lora combine`. */
export const combineCommand: Command = {
  name: 'combine',
  usage: `lora combine --adapter <dir> --adapter <dir> ... --weights W1,W2,... --type TYPE --out <dir> [options]
                                             combine adapters into one (PEFT's add_weighted_adapter), no model needed`,
  help: HELP,
  run: combine,
};
