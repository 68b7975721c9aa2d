import { readFile } from 'node:fs/promises';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, saveAdapter } from '@lora/core';
import { type EvaProgress, evaProgressBar, initializeLoraEvaWeights } from '@lora/eva';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { outputKinds } from '@lora/tensor/node';
import {
  type Command,
  type Io,
  OUTPUT_HELP,
  UsageError,
  isDir,
  numberOption,
  parseCommandArgs,
  prepareOut,
  startBackend,
} from '../shared';

const HELP = `lora eva --model <dir> --data <file> --out <dir> [options]

Makes an EVA-initialised LoRA adapter (Explained Variance Adaptation) for a Hugging Face Llama-family
checkpoint, as PEFT's get_peft_model(init_lora_weights="eva") + initialize_lora_eva_weights +
save_pretrained: the layers' inputs on --data go through an incremental PCA until their leading
components converge, each lora_A starts as those components (lora_B as zeros), and the ranks are
redistributed across layers by explained variance (rank_pattern / alpha_pattern in the adapter's config).
Train the adapter from there in Python (PeftModel.from_pretrained(model, out, is_trainable=True)) or with
@lora/core.

Options:
  --model DIR             the checkpoint: config.json, model.safetensors (or shards), tokenizer.json
  --data FILE             text: one example per line (blank lines skipped); a .jsonl file holds one
                          {"text": "..."} or {"input_ids": [...]} per line
  --out DIR               where the adapter goes (adapter_config.json, adapter_model.safetensors)
  --r N                   LoRA rank (default 8)
  --alpha A               lora_alpha (default 8)
  --target-modules a,b    module names (default: PEFT's for the model type, q_proj,v_proj for Llama)
  --rho X                 a layer may take up to round(r·rho) components (default 2; 1: no redistribution)
  --tau X                 convergence threshold on the components' cosine between batches (default 0.99)
  --whiten                divide each component by the square root of its singular value
  --no-adjust-scaling     keep lora_alpha where the rank changed (default: alpha·rank/r, so alpha/r stays)
  --batch-size N          examples per batch (default 4)
  --max-length N          tokens per example, longer ones cut (default 512)
  --max-batches N         use the first N batches of --data (default: all)
  --max-passes N          passes over the batches before stopping unconverged layers (default 10)
  --force                 replace --out if it exists (see Output below)

The pass runs on the backend LORA_BACKEND names (webgpu is much faster on a GPU), else tensorflow
(tfjs-node), wasm or cpu.

${OUTPUT_HELP}`;

/** Token ids per example from a text or JSON-lines file. */
async function readExamples(file: string, tokenizer: Awaited<ReturnType<typeof loadTokenizer>>, maxLength: number) {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(
      `--data ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`,
    );
  }
  const lines = text.split(/\r?\n/).filter((l) => l.trim().length > 0);
  const jsonl = file.endsWith('.jsonl');
  return lines.map((line, i) => {
    let ids: number[];
    if (jsonl) {
      let row: { text?: unknown; input_ids?: unknown };
      try {
        row = JSON.parse(line);
      } catch {
        throw new UsageError(`--data ${file}: line ${i + 1} is not JSON`);
      }
      if (Array.isArray(row.input_ids) && row.input_ids.every(Number.isInteger)) ids = row.input_ids as number[];
      else if (typeof row.text === 'string') ids = tokenizer.encode(row.text).ids;
      else
        throw new UsageError(`--data ${file}: line ${i + 1} has neither "text" (a string) nor "input_ids" (integers)`);
    } else ids = tokenizer.encode(line).ids;
    return ids.slice(0, maxLength);
  });
}

/** Right-padded batches with an attention mask; padding is left out of the PCA. */
function* batchesOf(examples: number[][], size: number, padId: number) {
  for (let i = 0; i < examples.length; i += size) {
    const rows = examples.slice(i, i + size).filter((e) => e.length > 0);
    if (rows.length === 0) continue;
    const len = Math.max(...rows.map((r) => r.length));
    const inputIds = tf.tensor2d(
      rows.map((r) => [...r, ...Array(len - r.length).fill(padId)]),
      [rows.length, len],
      'int32',
    );
    const attentionMask = tf.tensor2d(
      rows.map((r) => [...r.map(() => 1), ...Array(len - r.length).fill(0)]),
      [rows.length, len],
      'int32',
    );
    try {
      yield { inputIds, attentionMask };
    } finally {
      tf.dispose([inputIds, attentionMask]);
    }
  }
}

async function eva(args: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs({
    args,
    options: {
      help: { type: 'boolean' },
      model: { type: 'string' },
      data: { type: 'string' },
      out: { type: 'string' },
      r: { type: 'string' },
      alpha: { type: 'string' },
      'target-modules': { type: 'string' },
      rho: { type: 'string' },
      tau: { type: 'string' },
      whiten: { type: 'boolean' },
      'no-adjust-scaling': { type: 'boolean' },
      'batch-size': { type: 'string' },
      'max-length': { type: 'string' },
      'max-batches': { type: 'string' },
      'max-passes': { type: 'string' },
      force: { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  for (const o of ['model', 'data', 'out'] as const)
    if (!values[o]) throw new UsageError(`eva needs --${o}; see lora eva --help`);
  const positive = (n: number) => Number.isInteger(n) && n > 0;
  const r = numberOption(values.r, '--r', positive, 'a positive integer') ?? 8;
  const alpha = numberOption(values.alpha, '--alpha', (n) => Number.isFinite(n) && n > 0, 'a positive number') ?? 8;
  const rho =
    numberOption(values.rho, '--rho', (n) => Number.isFinite(n) && n >= 1, 'a number ≥ 1 (`rho` must be >= 1.0)') ?? 2;
  const tau = numberOption(values.tau, '--tau', (n) => n >= 0 && n <= 1, 'between 0 and 1') ?? 0.99;
  const batchSize = numberOption(values['batch-size'], '--batch-size', positive, 'a positive integer') ?? 4;
  const maxLength = numberOption(values['max-length'], '--max-length', positive, 'a positive integer') ?? 512;
  const maxBatches = numberOption(values['max-batches'], '--max-batches', positive, 'a positive integer');
  const maxPasses = numberOption(values['max-passes'], '--max-passes', positive, 'a positive integer') ?? 10;
  const targetModules = values['target-modules']
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const modelDir = values.model as string;
  if (!(await isDir(modelDir)))
    throw new UsageError(`--model ${modelDir} is not a directory (a Hugging Face checkpoint folder)`);
  // every check on --out before the model is read
  const output = await prepareOut(
    values.out as string,
    {
      kind: outputKinds.adapterDirectory,
      force: values.force ?? false,
      inputs: [
        { path: modelDir, label: '--model' },
        { path: values.data as string, label: '--data' },
      ],
    },
    io,
  );
  let model: LlamaForCausalLM | null = null;
  try {
    await startBackend(io);
    const tokenizer = await loadTokenizer(modelDir);
    let examples = await readExamples(values.data as string, tokenizer, maxLength);
    if (maxBatches !== undefined) examples = examples.slice(0, maxBatches * batchSize);
    model = await LlamaForCausalLM.fromPretrained(modelDir);
    const peft = getPeftModel(model, {
      r,
      loraAlpha: alpha,
      ...(targetModules?.length ? { targetModules } : {}),
      initLoraWeights: 'eva',
      evaConfig: { rho, tau, whiten: values.whiten ?? false, adjustScalingFactors: !values['no-adjust-scaling'] },
      baseModelNameOrPath: modelDir,
      taskType: 'CAUSAL_LM',
    });
    const padId = model.config.padTokenId ?? 0;
    const tty = process.stderr.isTTY === true;
    const bar = tty ? evaProgressBar() : null;
    const onProgress = (p: EvaProgress) =>
      bar
        ? bar.update(p)
        : io.err(`EVA batch ${p.step} (pass ${p.pass}): ${p.convergedLayers}/${p.totalLayers} layers converged`);
    const t0 = Date.now();
    const { ranks } = await initializeLoraEvaWeights(peft, () => batchesOf(examples, batchSize, padId), {
      maxPasses,
      progressBar: false,
      onProgress,
      warn: (m) => io.err(`warning: ${m}`),
    });
    bar?.done();
    await saveAdapter(peft, output.target, { warn: (m) => io.err(`warning: ${m}`) });
    await output.commit();
    const values_ = Object.values(ranks);
    io.err(
      `wrote ${values.out} (${values_.length} modules, ranks ${Math.min(...values_)}–${Math.max(...values_)}, ${values_.filter((v) => v === 0).length} without LoRA) in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    for (const [path, rank] of Object.entries(ranks)) io.out(`${path}\t${rank}`);
    return 0;
  } catch (e) {
    throw await output.explain(e);
  } finally {
    await output.abort();
    model?.dispose();
  }
}

/** `lora eva`. */
export const evaCommand: Command = {
  name: 'eva',
  usage: `lora eva --model <dir> --data <file> --out <dir> [--r N] [--rho X] [options]
                                             an EVA-initialised adapter from data (PEFT's initialize_lora_eva_weights)`,
  help: HELP,
  run: eva,
};
