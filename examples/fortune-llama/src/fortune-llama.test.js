// @ts-check
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
import { initBackend, readSafetensorsHeader } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { END_OF_TEXT, dataUrl, modelUrl, parseFortunes } from './index.js';

const modelDir = fileURLToPath(modelUrl);
const fixtures = join(import.meta.dirname, '..', '__fixtures__');
/** @type {{ text: string, ids: number[], ids_no_special: number[], decoded: string }[]} */
const cases = JSON.parse(readFileSync(join(fixtures, 'tokenizer-cases.json'), 'utf8'));
/**
 * What transformers computes with the shipped weights (tools/demo-model/pretrain.py).
 * @type {{ prompt: string, prompt_ids: number[], logits_last: number[], logits_first_8: number[][],
 *   lora_heldout_entry_losses: number[], greedy: { prompt: string, ids: number[], text: string }[] }}
 */
const reference = JSON.parse(readFileSync(join(fixtures, 'reference.json'), 'utf8'));
const fortunes = (/** @type {string} */ name) => parseFortunes(readFileSync(new URL(name, dataUrl), 'utf8'));

describe("fortune-llama's tokenizer, read by @lora/models' loadTokenizer", () => {
  it('encodes and decodes as Python `tokenizers` did when it trained it', async () => {
    const tokenizer = await loadTokenizer(modelDir);
    expect(tokenizer.token_to_id(END_OF_TEXT)).toBe(0);
    expect(cases.length).toBeGreaterThan(5);
    for (const c of cases) {
      expect(tokenizer.encode(c.text).ids, JSON.stringify(c.text)).toEqual(c.ids);
      expect(tokenizer.encode(c.text, { add_special_tokens: false }).ids).toEqual(c.ids_no_special);
      expect(tokenizer.decode(c.ids, { skip_special_tokens: true })).toBe(c.decoded);
    }
  });
});

describe('the LoRA task data', () => {
  it('parses as the split prepare_corpus.py wrote: 371 training and 60 held-out entries, no overlap', () => {
    const train = fortunes('fortunes.train.txt');
    const heldout = fortunes('fortunes.heldout.txt');
    expect([train.length, heldout.length]).toEqual([371, 60]);
    expect(heldout.filter((e) => train.includes(e))).toEqual([]);
    expect(parseFortunes('a\n%\n%s is not a separator\nb\n%\n\n')).toEqual(['a', '%s is not a separator\nb']);
  });
});

describe('fortune-llama against transformers (wasm backend)', () => {
  beforeAll(async () => {
    await initBackend('wasm');
  });

  it('is committed as bf16 safetensors under 5 MB', () => {
    const file = join(modelDir, 'model.safetensors');
    expect(existsSync(file), `${file} is missing: run tools/demo-model/pretrain.py`).toBe(true);
    expect(statSync(file).size).toBeLessThan(5_000_000);
    const { entries } = readSafetensorsHeader(new Uint8Array(readFileSync(file)));
    expect(new Set(entries.map((e) => e.dtype))).toEqual(new Set(['BF16']));
  });

  it('gives the logits, per-entry losses and greedy continuations transformers gave', async () => {
    const before = tf.memory().numTensors;
    const model = await LlamaForCausalLM.fromPretrained(modelDir);
    const tokenizer = await loadTokenizer(modelDir);
    model.eval();
    expect(tokenizer.encode(reference.prompt).ids).toEqual(reference.prompt_ids);

    const x = tf.tensor2d([reference.prompt_ids], [1, reference.prompt_ids.length], 'int32');
    const { logits } = model.forward(x);
    const rows = /** @type {number[][]} */ ((await logits.array())[0]);
    expect(maxRelativeError(rows.at(-1) ?? [], reference.logits_last)).toBeLessThan(1e-4);
    expect(
      maxRelativeError(
        rows.flatMap((r) => r.slice(0, 8)),
        reference.logits_first_8.flat(),
      ),
    ).toBeLessThan(1e-4);
    tf.dispose([x, logits]);

    // the first 20 held-out entries, each alone (the reference has all 60)
    const heldout = fortunes('fortunes.heldout.txt').slice(0, 20);
    const losses = [];
    for (const text of heldout) {
      const ids = [...tokenizer.encode(text).ids, 0];
      const t = tf.tensor2d([ids], [1, ids.length], 'int32');
      const { logits: l, loss } = model.forward(t, { labels: t });
      losses.push((await /** @type {tf.Scalar} */ (loss).data())[0] ?? Number.NaN);
      tf.dispose([t, l, /** @type {tf.Scalar} */ (loss)]);
    }
    expect(maxRelativeError(losses, reference.lora_heldout_entry_losses.slice(0, 20))).toBeLessThan(1e-4);

    for (const g of reference.greedy) {
      const prompt = tokenizer.encode(g.prompt).ids;
      const out = await model.generate([prompt], { maxNewTokens: g.ids.length - prompt.length });
      expect(out[0], g.prompt).toEqual(g.ids);
    }
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
