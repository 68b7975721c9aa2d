import { cp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import {
  DEFAULT_TARGET_MODULES,
  PEFT_SUFFIX,
  loraConfig,
  loraConfigToJson,
  peftKey,
  resolveTargetPaths,
} from '@lora/core';
import { QuantizationError, loftqInit } from '@lora/loftq';
import { serializeSafetensors } from '@lora/tensor';
import { outputKinds, readSafetensorsFileHeader, rewriteSafetensors } from '@lora/tensor/node';
import {
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  isDir,
  numberOption,
  parseCommandArgs,
  prepareOut,
  sizeOf,
  startBackend,
} from '../shared';

const ADAPTER_DIR = 'loftq_init';

const HELP = `lora loftq --base <model dir> --out <dir> [--rank 16] [--bits 4] [--iter 1] [options]

LoftQ (arXiv 2310.08659, PEFT's init_lora_weights="loftq") on a Hugging Face checkpoint, without building a
model: each target Linear weight W is quantized and a rank-r B·A fitted to what the quantization lost,
alternating --iter times, so that Q + B·A stays close to W. Writes what PEFT's LoftQ workflow saves:
  <out>/              the base with each target weight replaced by Q (dequantized, in the checkpoint's own
                      dtype), the other tensors and files (config.json, tokenizer) copied as they are;
                      quantize it again (bitsandbytes' NF4, or @lora/loftq's quantizeModel) to train over it
  <out>/${ADAPTER_DIR}/   the adapter: adapter_config.json (init_lora_weights true, so loading it does not run
                      LoftQ again) and adapter_model.safetensors holding A and B
Weights are streamed a tensor at a time and the output is written atomically, so memory stays near one
layer. Progress goes to stderr, one line per layer with the error ||W - Q - B·A|| / ||W|| it reached.

Options:
  --rank R          the adapter's rank r (default 16), below min(out, in) of every target
  --alpha A         lora_alpha (default: the rank; LoftQ's correction is exact when alpha / r = 1)
  --bits B          4 (bitsandbytes' NF4, default), 8 (int8), 3 or 2 (the LoftQ authors' normal float)
  --iter T          alternating steps (default 1; PEFT's loftq_iter)
  --target LIST     module names, comma-separated (suffix match, as target_modules), or all-linear (every 2-D
                    weight but embeddings and lm_head); default: PEFT's defaults for config.json's model_type
  --block-size N    values per absmax block at 2, 3 and 4 bits (default 64)
  --svd MODE        auto (default: a full SVD up to min(out, in) = 1024, randomized above), full, randomized
  --force           replace an earlier output of lora loftq (or another model directory) at --out

${OUTPUT_HELP}`;

/** Names that are not Linear weights although 2-D (embeddings and the output layer), for all-linear. */
const NOT_LINEAR = /(^|\.)(embed_tokens|embed_positions|wte|wpe|embeddings?|lm_head|word_embeddings|shared)$/;

interface Target {
  path: string;
  shard: string;
  shape: [number, number];
}

async function shardsOf(base: string): Promise<string[]> {
  const files = await readdir(base);
  if (files.includes('model.safetensors.index.json')) {
    const index = JSON.parse(await readFile(join(base, 'model.safetensors.index.json'), 'utf8')) as {
      weight_map?: Record<string, string>;
    };
    const shards = [...new Set(Object.values(index.weight_map ?? {}))];
    if (shards.length === 0) throw new UsageError(`${base}/model.safetensors.index.json has no weight_map`);
    return shards;
  }
  if (files.includes('model.safetensors')) return ['model.safetensors'];
  throw new UsageError(
    `${base} holds no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not supported: convert them to safetensors)`,
  );
}

async function modelType(base: string): Promise<string | undefined> {
  try {
    const c = JSON.parse(await readFile(join(base, 'config.json'), 'utf8')) as { model_type?: unknown };
    return typeof c.model_type === 'string' ? c.model_type : undefined;
  } catch {
    return undefined;
  }
}

async function loftq(args: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs({
    args,
    options: {
      help: { type: 'boolean' },
      base: { type: 'string' },
      out: { type: 'string' },
      rank: { type: 'string' },
      alpha: { type: 'string' },
      bits: { type: 'string' },
      iter: { type: 'string' },
      target: { type: 'string' },
      'block-size': { type: 'string' },
      svd: { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  for (const k of ['base', 'out'] as const)
    if (!values[k]) throw new UsageError(`loftq needs --${k}; see lora loftq --help`);
  const base = values.base as string;
  const out = values.out as string;
  const isInt = (n: number) => Number.isInteger(n) && n > 0;
  const rank = numberOption(values.rank, '--rank', isInt, 'a positive integer') ?? 16;
  const alpha = numberOption(values.alpha, '--alpha', (n) => Number.isFinite(n) && n > 0, 'a positive number') ?? rank;
  const bits = numberOption(values.bits, '--bits', (n) => [2, 3, 4, 8].includes(n), 'one of 2, 3, 4, 8') ?? 4;
  const iter = numberOption(values.iter, '--iter', isInt, 'a positive integer') ?? 1;
  const blockSize = numberOption(values['block-size'], '--block-size', isInt, 'a positive integer') ?? 64;
  const svd = (values.svd ?? 'auto') as 'auto' | 'full' | 'randomized';
  if (!['auto', 'full', 'randomized'].includes(svd))
    throw new UsageError(`--svd ${JSON.stringify(values.svd)} is not one of auto, full, randomized`);
  if (!(await isDir(base))) throw new UsageError(`--base ${base} is not a checkpoint directory`);

  // everything is checked from the headers before a tensor is read or a file written
  const shards = await shardsOf(base);
  const weights: Target[] = [];
  for (const shard of shards)
    for (const e of (await readSafetensorsFileHeader(join(base, shard))).entries)
      if (e.name.endsWith('.weight') && e.shape.length === 2)
        weights.push({ path: e.name.slice(0, -'.weight'.length), shard, shape: e.shape as [number, number] });
  let targetModules: string[];
  if (values.target === 'all-linear') targetModules = weights.map((w) => w.path).filter((p) => !NOT_LINEAR.test(p));
  else if (values.target)
    targetModules = values.target
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  else {
    const type = await modelType(base);
    const defaults = type ? DEFAULT_TARGET_MODULES[type] : undefined;
    if (!defaults)
      throw new UsageError(
        `--target is not given and ${type ? `model_type '${type}' has no default target modules` : `${base}/config.json names no model_type`}; pass --target q_proj,v_proj (or all-linear)`,
      );
    targetModules = [...defaults];
  }
  const config = loraConfig({ r: rank, loraAlpha: alpha, targetModules });
  let matched: string[];
  try {
    matched = resolveTargetPaths(
      weights.map((w) => w.path),
      config,
    ).targeted;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const targets = weights.filter((w) => matched.includes(w.path));
  for (const t of targets) {
    const k = Math.min(...t.shape);
    if (rank >= k)
      throw new UsageError(
        `--rank ${rank} is not below min(out, in) = ${k} of ${t.path}.weight [${t.shape.join(', ')}]`,
      );
    if ((bits === 2 || bits === 3) && (t.shape[0] * t.shape[1]) % blockSize !== 0)
      throw new UsageError(
        `--block-size ${blockSize} does not divide the ${t.shape[0] * t.shape[1]} values of ${t.path}.weight [${t.shape.join(', ')}], which ${bits}-bit normal float requires`,
      );
  }
  // every check on --out (and its free space: about the base's size) before the work
  const others = (await readdir(base)).filter((f) => !shards.includes(f));
  const output = await prepareOut(
    out,
    {
      kind: outputKinds.modelDirectory({ alsoOwns: [...others, ADAPTER_DIR] }),
      force: values.force ?? false,
      inputs: [{ path: base, label: '--base' }],
      bytesNeeded: await sizeOf(base),
    },
    io,
  );
  const factors: Record<string, tf.Tensor> = {};
  let done = 0;
  try {
    await startBackend(io);
    io.err(
      `LoftQ on ${targets.length} weights of ${base}: ${bits} bits, rank ${rank}, ${iter} step${iter > 1 ? 's' : ''}, alpha ${alpha}`,
    );
    const byShard = new Map<string, Map<string, Target>>();
    for (const t of targets) {
      const m = byShard.get(t.shard) ?? new Map<string, Target>();
      m.set(`${t.path}.weight`, t);
      byShard.set(t.shard, m);
    }
    const tmp = output.target;
    for (const shard of shards) {
      const wanted = byShard.get(shard);
      await rewriteSafetensors(join(base, shard), join(tmp, shard), async (name, file) => {
        const t = wanted?.get(name);
        if (!t) return undefined;
        const d = await file.read(name);
        let error = Number.NaN;
        const started = Date.now();
        const r = await loftqInit(
          { data: d.values as Float32Array, shape: t.shape },
          {
            numBits: bits as 2 | 3 | 4 | 8,
            reducedRank: rank,
            numIter: iter,
            blockSize,
            svd,
            onIteration: (s) => {
              error = s.relativeError;
            },
          },
        ).catch((e) => {
          throw e instanceof QuantizationError ? new UsageError(`${t.path}: ${e.message}`) : e;
        });
        factors[peftKey(t.path, PEFT_SUFFIX.loraA)] = r.loraA;
        factors[peftKey(t.path, PEFT_SUFFIX.loraB)] = r.loraB;
        const q = (await r.dequantized.data()) as Float32Array;
        r.dequantized.dispose();
        done++;
        io.err(
          `  [${done}/${targets.length}] ${t.path} [${t.shape.join(', ')}]: ||W - Q - BA|| / ||W|| = ${error.toFixed(5)} (${((Date.now() - started) / 1000).toFixed(1)} s)`,
        );
        return q;
      });
    }
    // the checkpoint's other files and folders (config.json, tokenizer files, the index) come along
    for (const f of others) await cp(join(base, f), join(tmp, f), { recursive: true });
    const adapterDir = join(tmp, ADAPTER_DIR);
    await mkdir(adapterDir);
    await writeFile(
      join(adapterDir, 'adapter_model.safetensors'),
      await serializeSafetensors(factors, { metadata: { format: 'pt' } }),
    );
    // as PEFT's LoftQ example saves it: initialised already, so loading never runs LoftQ again
    const saved = loraConfig({
      r: rank,
      loraAlpha: alpha,
      targetModules,
      initLoraWeights: true,
      baseModelNameOrPath: resolve(out),
    });
    await writeFile(join(adapterDir, 'adapter_config.json'), loraConfigToJson(saved));
    await output.commit();
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
    tf.dispose(Object.values(factors));
  }
  io.err(
    `wrote ${out} (the LoftQ base) and ${join(out, ADAPTER_DIR)} (the adapter, ${targets.length} modules)${output.replaces ? '; the old output replaced' : ''}`,
  );
  return 0;
}

export const loftqCommand: Command = {
  name: 'loftq',
  usage: `lora loftq --base <model dir> --out <dir> [--rank R] [--bits 4|8|3|2] [--iter T] [--target LIST]
                                             LoftQ: a quantized base and the adapter that corrects it`,
  help: HELP,
  run: loftq,
};
