import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, readSafetensorsHeader } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { Linear, Module, withoutInit } from '@lora/nn';
import { type LoraConfig, getPeftModel, loadAdapter, saveAdapter, serializeAdapter } from '@lora/core';
import { FIX, readFixture } from '../fixture-nets.test-util';
import { tokNet } from '../token-nets.test-util';

interface KeysCase {
  tied: boolean;
  config: { target_modules: string[] | string; trainable_token_indices?: number[] };
  save_embedding_layers: boolean | 'auto';
  keys: Record<string, number[]>;
  warnings: string[];
}
const cases = JSON.parse(readFileSync(join(FIX, 'tokens-notes.json'), 'utf8')).embedding_keys as Record<
  string,
  KeysCase
>;

const keysOf = (weights: Uint8Array) =>
  Object.fromEntries(readSafetensorsHeader(weights).entries.map((e) => [e.name, e.shape]));

beforeAll(async () => {
  await initBackend('cpu');
});

describe('saveEmbeddingLayers', () => {
  for (const [label, c] of Object.entries(cases)) {
    // PEFT's 'all-linear' also wraps lm_head on a model that is not a transformers PreTrainedModel; @lora's
    // resolveTargets always leaves the output layer out, so that case has no counterpart here.
    if (label === 'all_linear_auto') continue;
    it(`${label}: the keys, shapes and warnings PEFT writes (save_embedding_layers=${String(c.save_embedding_layers)})`, async () => {
      const fields: Partial<LoraConfig> = {
        r: 2,
        targetModules: c.config.target_modules,
        trainableTokenIndices: c.config.trainable_token_indices ?? null,
      };
      const peft = getPeftModel(tokNet(c.tied), fields);
      const warnings: string[] = [];
      const before = tf.memory().numTensors;
      const { weights } = await serializeAdapter(peft, 'default', {
        saveEmbeddingLayers: c.save_embedding_layers,
        warn: (m) => warnings.push(m),
      });
      expect(tf.memory().numTensors).toBe(before);
      expect(keysOf(weights)).toEqual(c.keys);
      expect(warnings).toEqual(c.warnings);
      peft.dispose();
    });
  }

  it("the saved weights are the model's: a tied table under both names, a trainable-tokens wrapper's base table", async () => {
    const peft = getPeftModel(tokNet(true), { r: 2, targetModules: ['lin'], trainableTokenIndices: [1, 3] });
    const { weights } = await serializeAdapter(peft, 'default', { saveEmbeddingLayers: true });
    const { parseSafetensors } = await import('@lora/tensor');
    const saved = parseSafetensors(weights).tensors;
    const base = readFixture('tokens-tied-base.safetensors');
    for (const k of ['embed_tokens.token_adapter.base_layer.weight', 'lm_head.token_adapter.base_layer.weight']) {
      expect(
        maxRelativeError(await saved[`base_model.model.${k}`]!.data(), await base['embed_tokens.weight']!.data()),
        k,
      ).toBe(0);
    }
    tf.dispose([...Object.values(saved), ...Object.values(base)]);
    peft.dispose();
  });

  it("'auto' also saves them when the vocabulary differs from the base checkpoint's config.json (resized), as PEFT", async () => {
    const base = mkdtempSync(join(tmpdir(), 'lora-base-'));
    const out = mkdtempSync(join(tmpdir(), 'lora-adapter-'));
    const save = async (vocab: number | null) => {
      if (vocab !== null) writeFileSync(join(base, 'config.json'), JSON.stringify({ vocab_size: vocab }));
      const peft = getPeftModel(tokNet(), {
        r: 2,
        targetModules: ['lin'],
        baseModelNameOrPath: vocab === null ? join(base, 'absent') : base,
      });
      const warnings: string[] = [];
      await saveAdapter(peft, out, { force: true, warn: (m) => warnings.push(m) });
      peft.dispose();
      return {
        keys: Object.keys(keysOf(new Uint8Array(readFileSync(join(out, 'adapter_model.safetensors'))))).sort(),
        warnings,
      };
    };
    const resized = await save(16);
    expect(resized.keys).toEqual([
      'base_model.model.embed_tokens.weight',
      'base_model.model.lin.lora_A.weight',
      'base_model.model.lin.lora_B.weight',
      'base_model.model.lm_head.weight',
    ]);
    expect(resized.warnings).toEqual([
      'Setting `save_embedding_layers` to `True` as the embedding layer has been resized during finetuning.',
    ]);
    expect(await save(20)).toEqual({
      keys: ['base_model.model.lin.lora_A.weight', 'base_model.model.lin.lora_B.weight'],
      warnings: [],
    });
    const absent = await save(null);
    expect(absent.keys).toHaveLength(2);
    expect(absent.warnings).toEqual([
      `Could not find a config file in ${join(base, 'absent')} - will assume that the vocabulary was not modified.`,
    ]);
  });

  it('a model without a recognisable embedding: nothing extra saved, with a warning that names the rule', async () => {
    class Mlp extends Module {
      up = this.registerModule('up', new Linear(4, 4));
      forward(x: tf.Tensor) {
        return this.up.call(x);
      }
    }
    const peft = getPeftModel(
      withoutInit(() => new Mlp()),
      { r: 2, targetModules: ['up'] },
    );
    const warnings: string[] = [];
    const { weights } = await serializeAdapter(peft, 'default', {
      saveEmbeddingLayers: true,
      warn: (m) => warnings.push(m),
    });
    expect(Object.keys(keysOf(weights))).toEqual([
      'base_model.model.up.lora_A.weight',
      'base_model.model.up.lora_B.weight',
    ]);
    expect(warnings[0]).toMatch(
      /^Could not identify embedding layer\(s\) because the model is not a 🤗 transformers model\. .*getInputEmbeddings\(\)/,
    );
    peft.dispose();
  });
});

it("loadAdapter puts embedding weights saved with the adapter into the base model, as PEFT's from_pretrained", async () => {
  const want = readFixture('tokens-embed-layers-expected.safetensors');
  const ids = readFixture('tokens-expected.safetensors');
  const before = tf.memory().numTensors;
  const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(tokNet(), join(FIX, 'peft-embed-layers'));
  expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
  const y = peft.call(ids.ids) as tf.Tensor;
  expect(maxRelativeError(await y.data(), await want.out!.data())).toBeLessThan(1e-5);
  y.dispose();
  peft.dispose();
  expect(tf.memory().numTensors).toBe(before);
  tf.dispose([...Object.values(want), ...Object.values(ids)]);
});
