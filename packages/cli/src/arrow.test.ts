import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getPeftModel, saveAdapter } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { manualSeed } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import { createArrowModel } from '@lora/arrow';
import { runCli } from '@lora/cli';
import { writeTinyLlama } from './tiny-llama.test-util';

// a tiny Llama with the models package's 300-token BPE tokenizer, and PEFT-layout experts for it
const dir = mkdtempSync(join(tmpdir(), 'lora-cli-arrow-'));
const base = join(dir, 'base');
const expert = (name: string) => join(dir, name);
const PROMPT = 'the quick brown fox';

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

async function saveExpert(name: string, seed: number, r = 4, targetModules = ['q_proj', 'v_proj', 'down_proj']) {
  manualSeed(seed);
  const peft = getPeftModel(await LlamaForCausalLM.fromPretrained(base), {
    r,
    loraAlpha: 2 * r,
    targetModules,
    initLoraWeights: false,
  });
  await saveAdapter(peft, expert(name));
  peft.dispose();
}

beforeAll(async () => {
  await initBackend('cpu');
  await writeTinyLlama(base, { config: { architectures: ['LlamaForCausalLM'], bos_token_id: 1, eos_token_id: 2 } });
  for (const [i, name] of ['sql', 'math', 'chat', 'wiki'].entries()) await saveExpert(name, i + 1);
  await saveExpert('rank8', 9, 8);
  await saveExpert('q-only', 10, 4, ['q_proj']);
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What createArrowModel and generate give for the same settings: the command must print the same text. */
async function expected(tasks: string[], config: object, options: object, maxNewTokens: number) {
  const model = await LlamaForCausalLM.fromPretrained(base);
  const tok = await loadTokenizer(base);
  const peft = await createArrowModel(model, tasks.map(expert), config, { ...options, warn: () => {} });
  const ids = await model.generate([tok.encode(PROMPT).ids], { maxNewTokens });
  peft.dispose();
  return tok.decode(ids[0] as number[], { skip_special_tokens: true });
}

describe('lora arrow', () => {
  it('routes a prompt through the experts and prints the continuation createArrowModel gives', async () => {
    const tasks = ['sql', 'math', 'chat'];
    const r = await run(
      'arrow',
      '--base',
      base,
      '--task',
      tasks.map(expert).join(','),
      '--top-k',
      '2',
      '--prompt',
      PROMPT,
      '--max-new-tokens',
      '8',
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/routing over 3 experts \(top 2\) on 6 layers/);
    expect(r.out).toBe(await expected(tasks, { topK: 2, rngSeed: 0 }, {}, 8));
    expect(r.out.startsWith(PROMPT)).toBe(true);
  });

  it('with --general subtracts the general adapters (GenKnowSub), --exact uses exact prototypes, and --show-routing reports the shares', async () => {
    const tasks = ['sql', 'math', 'chat'];
    const r = await run(
      'arrow',
      ...['--base', base, '--task', tasks.map(expert).join(','), '--general', expert('wiki')],
      ...[
        '--top-k',
        '3',
        '--temperature',
        '0.5',
        '--seed',
        '4',
        '--exact',
        '--prompt',
        PROMPT,
        '--max-new-tokens',
        '6',
        '--show-routing',
      ],
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/GenKnowSub with 1 general adapter/);
    const [text, header, ...rows] = r.out.split('\n');
    expect(text).toBe(
      await expected(
        tasks,
        { topK: 3, routerTemperature: 0.5, rngSeed: 4, useGks: true },
        { generalAdapterPaths: [expert('wiki')], prototypes: 'exact' },
        6,
      ),
    );
    expect(header).toBe('routing weight per expert (mean over layers):');
    expect(rows).toHaveLength(3);
    const shares = rows.map((l) => Number(/(\d+\.\d)%/.exec(l)?.[1]));
    expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(100, 0);
    expect(rows[0]).toMatch(/task_0 .*sql$/);
  });

  it('refuses what cannot be routed, with the reason (exit code 2), and bad options', async () => {
    const cases: [string[], RegExp][] = [
      [['--task', `${expert('sql')},${expert('rank8')}`, '--top-k', '1'], /\[task_1\] rank mismatch: 8 != 4/],
      [['--task', `${expert('sql')},${expert('q-only')}`, '--top-k', '1'], /\[task_1\] target_modules mismatch/],
      [['--task', expert('sql'), '--top-k', '2'], /--top-k 2 is more than the 1 expert given with --task/],
      [['--task', expert('sql'), '--top-k', '0'], /--top-k "0" is not a positive integer/],
      [['--task', ','], /--task names no adapter/],
      [['--task', expert('sql'), '--top-k', '1', '--temperature', '-1'], /--temperature "-1" is not a positive number/],
    ];
    for (const [extra, message] of cases) {
      const r = await run('arrow', '--base', base, '--prompt', PROMPT, ...extra);
      expect(r.code, `${extra.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(message);
    }
    const missing = await run('arrow', '--base', base, '--prompt', PROMPT);
    expect([missing.code, missing.err]).toEqual([2, 'lora arrow: arrow needs --task; see lora arrow --help']);
    const help = await run('arrow', '--help');
    expect(help.out).toMatch(/^lora arrow --base/);
    expect((await run('--help')).out).toMatch(/lora arrow --base <dir> --task a,b,c/);
  });
});
