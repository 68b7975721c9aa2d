import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadAdapter } from '@lora/core';
import { LlamaForCausalLM } from '@lora/models';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { runCli } from '@lora/cli';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeTinyLlama } from './tiny-llama.test-util';

const TEXT = [
  'Low-rank adapters fine-tune large language models cheaply.',
  'LoRA trains two small matrices per layer.',
  'The quick brown fox jumps over the lazy dog!',
  'EVA starts each adapter from the directions its layer sees most.',
  'Incremental PCA reads one batch at a time.',
  'Ranks move to the layers whose inputs vary most.',
];

async function run(...argv: string[]) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(argv, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

let work: string;
let model: string;
beforeAll(async () => {
  await initBackend('cpu');
  work = mkdtempSync(join(tmpdir(), 'lora-eva-cli-'));
  model = join(work, 'tiny-llama');
  await writeTinyLlama(model);
  writeFileSync(join(work, 'data.txt'), `${TEXT.join('\n')}\n\n${TEXT.slice(0, 3).join('\n')}\n`);
});

describe('lora eva', () => {
  it("writes PEFT's EVA adapter: ranks redistributed, A set, B zero, loadable", async () => {
    const out = join(work, 'adapter');
    const r = await run(
      'eva',
      '--model',
      model,
      '--data',
      join(work, 'data.txt'),
      '--out',
      out,
      '--r',
      '4',
      '--alpha',
      '8',
      '--target-modules',
      'q_proj,k_proj,v_proj,o_proj',
      '--rho',
      '2',
      '--batch-size',
      '3',
    );
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/EVA batch 1 \(pass 1\): \d+\/8 layers converged/);
    expect(r.err).toMatch(/wrote .*adapter \(8 modules, ranks \d+–\d+/);
    const config = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(config.init_lora_weights).toBe('eva');
    expect(config.eva_config).toMatchObject({ rho: 2, tau: 0.99, whiten: false, adjust_scaling_factors: true });
    const tensors = parseSafetensors(new Uint8Array(readFileSync(join(out, 'adapter_model.safetensors')))).tensors;
    const ranks: Record<string, number> = Object.fromEntries(
      r.out
        .split('\n')
        .map((l) => l.split('\t'))
        .map(([p, k]) => [p, Number(k)]),
    );
    expect(Object.values(ranks).reduce((a, b) => a + b, 0)).toBe(8 * 4); // the budget: r per layer, redistributed
    for (const [path, rank] of Object.entries(ranks)) {
      if (rank === 0) continue;
      expect(tensors[`base_model.model.${path}.lora_A.weight`]?.shape).toEqual([rank, 32]);
      expect(config.rank_pattern[path] ?? 4).toBe(rank);
      expect(config.alpha_pattern[path] ?? 8).toBeCloseTo((8 * rank) / 4, 12);
      expect(
        Math.max(...(await (tensors[`base_model.model.${path}.lora_B.weight`] as tf.Tensor).data()).map(Math.abs)),
      ).toBe(0);
    }
    tf.dispose(Object.values(tensors));
    const { model: peft } = await loadAdapter(await LlamaForCausalLM.fromPretrained(model), out);
    expect([...peft.loraLayers()].length).toBe(Object.values(ranks).filter((k) => k > 0).length);
    peft.dispose();
  });

  it('reads token ids from JSON lines', async () => {
    const rows = Array.from({ length: 6 }, (_, i) =>
      JSON.stringify({ input_ids: Array.from({ length: 12 }, (_, j) => (i * 31 + j * 7) % 300) }),
    );
    writeFileSync(join(work, 'ids.jsonl'), rows.join('\n'));
    const r = await run(
      'eva',
      '--model',
      model,
      '--data',
      join(work, 'ids.jsonl'),
      '--out',
      join(work, 'ids-adapter'),
      '--r',
      '2',
    );
    expect(r.code, r.err).toBe(0);
    expect(r.out.split('\n')).toHaveLength(4); // q_proj and v_proj of 2 layers, Llama's defaults
  });

  it('refuses bad input with one line: missing options, rho < 1, an empty file, an existing --out', async () => {
    expect((await run('eva', '--model', model, '--out', join(work, 'x'))).err).toMatch(/eva needs --data/);
    const low = await run(
      'eva',
      '--model',
      model,
      '--data',
      join(work, 'data.txt'),
      '--out',
      join(work, 'x'),
      '--rho',
      '0.5',
    );
    expect(low.code).toBe(2);
    expect(low.err).toMatch(/--rho "0.5" is not a number ≥ 1/);
    writeFileSync(join(work, 'empty.txt'), '\n\n');
    const empty = await run('eva', '--model', model, '--data', join(work, 'empty.txt'), '--out', join(work, 'y'));
    expect(empty.code).toBe(1);
    expect(empty.err).toMatch(/lora eva: dataloader is empty/);
    expect(existsSync(join(work, 'y'))).toBe(false); // the failed run left no output behind
    const inside = await run('eva', '--model', model, '--data', join(work, 'data.txt'), '--out', join(model, 'eva'));
    expect(inside.code).toBe(2);
    expect(inside.err).toMatch(/--out .*--model/);
    const exists = await run('eva', '--model', model, '--data', join(work, 'data.txt'), '--out', join(work, 'adapter'));
    expect(exists.code).toBe(2);
    expect(exists.err).toMatch(/--out .* exists; .* --force/);
  });
});
