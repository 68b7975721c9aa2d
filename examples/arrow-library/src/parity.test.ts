import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, describe, expect, it } from 'vitest';
import type { ArrowConfig } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { createArrowModel } from '@lora/arrow';
import { runCli } from '@lora/cli';

// tools/oracle/arrow_llama_fixtures.py: a tiny transformers Llama, five PEFT-saved experts, two general adapters
const FIX = join(import.meta.dirname, '..', '__fixtures__');
const BASE = join(FIX, 'tiny-llama');
const TASKS = [0, 1, 2, 3, 4].map((i) => join(FIX, `task-${i}`));
const GENERAL = [0, 1].map((i) => join(FIX, `general-${i}`));
const record = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8')) as {
  prompt: string;
  prompt_ids: number[];
  generated: Record<string, number[]>;
};
const CASES: [string, Partial<ArrowConfig>][] = [
  ['top2', { topK: 2, rngSeed: 42 }],
  ['top3-t05', { topK: 3, routerTemperature: 0.5, rngSeed: 42 }],
  ['gks', { topK: 2, useGks: true, rngSeed: 42 }],
];

let expected: Record<string, tf.Tensor> | null = null;
const want = (k: string) => {
  expected ??= parseSafetensors(new Uint8Array(readFileSync(join(FIX, 'expected.safetensors')))).tensors;
  return expected[k] as tf.Tensor;
};
afterEach(() => {
  tf.dispose(Object.values(expected ?? {}));
  expected = null;
});

const arrow = async (config: Partial<ArrowConfig>) =>
  createArrowModel(await LlamaForCausalLM.fromPretrained(BASE), TASKS, config, {
    ...(config.useGks ? { generalAdapterPaths: GENERAL } : {}),
    warn: () => {},
  });

await describeEachBackend('Arrow on a Llama against PEFT 0.21', () => {
  for (const [key, config] of CASES)
    it(`${key}: PEFT's logits (every projection of every layer routed); a second forward gives the same`, async () => {
      const model = await arrow(config);
      const logits = async () => {
        const { logits: y } = (model.model as LlamaForCausalLM).forward(want('ids') as tf.Tensor2D);
        const v = await y.data();
        y.dispose();
        return v;
      };
      const first = await logits();
      expect(maxRelativeError(first, await want(`${key}.logits`).data())).toBeLessThan(1e-5);
      expect(await logits()).toEqual(first);
      model.dispose();
    });
});

describe('lora arrow on the tiny Llama', () => {
  it("generates PEFT's greedy continuation, routed token by token (top-2, and with GenKnowSub)", async () => {
    await initBackend('cpu');
    const tokenizer = await loadTokenizer(BASE);
    expect(tokenizer.encode(record.prompt).ids).toEqual(record.prompt_ids);
    for (const [key, extra] of [
      ['top2', []],
      ['gks', ['--general', GENERAL.join(',')]],
    ] as const) {
      const out: string[] = [];
      const err: string[] = [];
      const code = await runCli(
        [
          'arrow',
          '--base',
          BASE,
          '--task',
          TASKS.join(','),
          ...extra,
          '--top-k',
          '2',
          '--seed',
          '42',
          '--prompt',
          record.prompt,
          '--max-new-tokens',
          '8',
        ],
        { out: (l) => out.push(l), err: (l) => err.push(l) },
      );
      expect(code, err.join('\n')).toBe(0);
      expect(out.join('\n'), key).toBe(
        tokenizer.decode(record.generated[key] as number[], { skip_special_tokens: true }),
      );
    }
  });
});
