import { ArrowError, arrowRouters, createArrowModel } from '@lora/arrow';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { type Command, type Io, UsageError, numberOption, parseCommandArgs, startBackend } from '../shared';

const HELP = `lora arrow --base <model dir or Hub id> --task <adapter>,<adapter>,… --prompt TEXT [options]

Routes a prompt through a library of LoRA experts with Arrow (PEFT 0.21's create_arrow_model) and
prints the continuation: every token of every adapted layer goes through the --top-k experts whose
prototype (the top right singular vector of the expert's B·A) it aligns with best, mixed by a softmax
of those alignments. With --general, GenKnowSub first subtracts the averaged general adapters from
each expert. The base is a Llama-family checkpoint (config.json, model.safetensors, tokenizer.json);
the adapters are PEFT adapter directories or Hub repo ids ('user/repo/sub/folder' for a sub-folder),
all made for that base with the same rank and target modules. Nothing is written.

Options:
  --task A,B,…            the task experts (task_0, task_1, … in this order); at least one
  --general D,E,…         general adapters for GenKnowSub (gks_0, …); turns GenKnowSub on
  --top-k K               experts per token (default 3; at most the number of experts)
  --temperature T         the routing softmax's temperature (default 1)
  --seed N                seed of the prototypes' power iteration (default 0)
  --exact                 exact prototypes (float64 SVD of each expert's factors) instead of PEFT's 15 power steps
  --max-new-tokens N      tokens to generate (default 40)
  --sample T              sample at temperature T (default: greedy), with --sample-seed N (default 0)
  --show-routing          after the text, how much of the routing weight each expert took, averaged over the layers`;

/** A comma-separated list option, its empty entries dropped. */
function listOption(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

async function arrow(args: string[], io: Io): Promise<number> {
  const { values } = parseCommandArgs({
    args,
    options: {
      help: { type: 'boolean' },
      base: { type: 'string' },
      task: { type: 'string' },
      general: { type: 'string' },
      'top-k': { type: 'string' },
      temperature: { type: 'string' },
      seed: { type: 'string' },
      exact: { type: 'boolean' },
      prompt: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      sample: { type: 'string' },
      'sample-seed': { type: 'string' },
      'show-routing': { type: 'boolean' },
    },
  });
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  for (const k of ['base', 'task', 'prompt'] as const)
    if (values[k] === undefined) throw new UsageError(`arrow needs --${k}; see lora arrow --help`);
  const tasks = listOption(values.task);
  if (tasks.length === 0) throw new UsageError('--task names no adapter: give one or more, comma-separated');
  const general = listOption(values.general);
  const isInt = (n: number) => Number.isInteger(n);
  const topK = numberOption(values['top-k'], '--top-k', (n) => isInt(n) && n >= 1, 'a positive integer') ?? 3;
  if (topK > tasks.length)
    throw new UsageError(
      `--top-k ${topK} is more than the ${tasks.length} expert${tasks.length === 1 ? '' : 's'} given with --task; use --top-k ${tasks.length} or fewer`,
    );
  const routerTemperature =
    numberOption(values.temperature, '--temperature', (n) => n > 0 && Number.isFinite(n), 'a positive number') ?? 1;
  const rngSeed = numberOption(values.seed, '--seed', (n) => isInt(n) && n >= 0, 'a non-negative integer') ?? 0;
  const maxNewTokens =
    numberOption(values['max-new-tokens'], '--max-new-tokens', (n) => isInt(n) && n >= 1, 'a positive integer') ?? 40;
  const sample = numberOption(values.sample, '--sample', (n) => n > 0 && Number.isFinite(n), 'a positive temperature');
  const sampleSeed =
    numberOption(values['sample-seed'], '--sample-seed', (n) => isInt(n) && n >= 0, 'a non-negative integer') ?? 0;
  await startBackend(io);
  const base = values.base as string;
  io.err(`loading ${base}`);
  const [model, tokenizer] = await Promise.all([LlamaForCausalLM.fromPretrained(base), loadTokenizer(base)]);
  let peft: Awaited<ReturnType<typeof createArrowModel>>;
  try {
    peft = await createArrowModel(
      model,
      tasks,
      { topK, routerTemperature, rngSeed, useGks: general.length > 0 },
      {
        ...(general.length ? { generalAdapterPaths: general } : {}),
        prototypes: values.exact ? 'exact' : 'power-iteration',
        warn: (m) => io.err(`warning: ${m}`),
      },
    );
  } catch (e) {
    model.dispose();
    // an expert that does not fit is the user's input: say so as a usage error
    if (e instanceof ArrowError) throw new UsageError(e.message.split('\n').join(' '));
    throw e;
  }
  try {
    io.err(
      `routing over ${tasks.length} expert${tasks.length === 1 ? '' : 's'} (top ${topK}${general.length ? `, GenKnowSub with ${general.length} general adapter${general.length === 1 ? '' : 's'}` : ''}) on ${[...arrowRouters(peft)].length} layers`,
    );
    const routers = [...arrowRouters(peft)].map(([, r]) => r);
    for (const r of routers) r.recordUsage = values['show-routing'] ?? false;
    const prompt = tokenizer.encode(values.prompt as string).ids;
    const out = await model.generate([prompt], {
      maxNewTokens,
      ...(sample !== undefined ? { temperature: sample, seed: sampleSeed } : {}),
    });
    io.out(tokenizer.decode(out[0] as number[], { skip_special_tokens: true }));
    if (values['show-routing']) {
      const share = new Array<number>(tasks.length).fill(0);
      for (const r of routers) {
        const u = await r.usage();
        const total = u.weight.reduce((a, b) => a + b, 0) || 1;
        for (const [i, w] of u.weight.entries()) share[i] = (share[i] as number) + w / total / routers.length;
      }
      io.out('routing weight per expert (mean over layers):');
      for (const [i, t] of tasks.entries())
        io.out(`  task_${i}  ${((share[i] as number) * 100).toFixed(1).padStart(5)}%  ${t}`);
    }
    return 0;
  } finally {
    peft.dispose();
  }
}

/** `lora arrow`. */
export const arrowCommand: Command = {
  name: 'arrow',
  usage: `lora arrow --base <dir> --task a,b,c [--general d,e] [--top-k 3] --prompt TEXT
                                             route a prompt through a library of LoRA experts (Arrow)`,
  help: HELP,
  run: arrow,
};
