import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { readAdapterFiles, readFixture } from '../fixture-nets.test-util';
import { maxRelativeError } from '@lora/tensor/testing';
import { mergeAdapterWeights } from '@lora/core';

const adapter = readAdapterFiles;
const read = readFixture;

beforeAll(async () => {
  await initBackend('cpu');
});

it("merges adapters into weight files by name as PEFT's merge_and_unload does (patterns, lora_bias, DoRA, Embedding)", async () => {
  const base = read('base.safetensors');
  const want = read('expected.safetensors');
  const before = tf.memory().numTensors;
  for (const name of ['peft-qv', 'peft-patterns', 'peft-regex-bias', 'peft-dora']) {
    const a = adapter(name);
    const { merged, missing } = mergeAdapterWeights(base, a);
    expect(missing).toEqual([]);
    for (const k of ['layers.1.mlp.weight', 'layers.0.q_proj.weight', 'layers.0.q_proj.bias']) {
      const got = merged[k] ?? base[k]!;
      expect(
        maxRelativeError(await got.data(), await want[`${name}.merged.${k}`]!.data()),
        `${name} ${k}`,
      ).toBeLessThan(1e-5);
    }
    tf.dispose([...Object.values(merged), ...Object.values(a.tensors)]);
  }
  expect(tf.memory().numTensors).toBe(before);
  const emb = adapter('peft-embedding');
  const embBase = read('emb-base.safetensors');
  const { merged } = mergeAdapterWeights(embBase, emb);
  expect(
    maxRelativeError(
      await merged['embed.weight']!.data(),
      await read('emb-expected.safetensors')['merged.embed.weight']!.data(),
    ),
  ).toBeLessThan(1e-5);
  // a shard without the adapter's modules reports them missing instead of failing
  expect(mergeAdapterWeights({}, emb).missing).toEqual(['embed.weight', 'lin.weight']);
});

it("writes the adapter's whole tensors in place of the base's (modules_to_save, bias 'all', bias 'lora_only' with lora_bias), as PEFT's merge_and_unload leaves them", async () => {
  const base = read('base.safetensors');
  const want = read('merge-replaced-expected.safetensors');
  const before = tf.memory().numTensors;
  for (const name of ['mts', 'bias-all', 'bias-lora-only']) {
    const a = adapter(`merge-replaced-${name}`);
    const { merged, missing } = mergeAdapterWeights(base, a);
    expect(missing).toEqual([]);
    const keys = Object.keys(want).filter((k) => k.startsWith(`${name}.`));
    expect(keys.length).toBe(Object.keys(base).length);
    let changed = 0;
    for (const k of keys) {
      const key = k.slice(name.length + 1);
      const got = merged[key] ?? base[key];
      expect(got, `${name} ${key}`).toBeDefined();
      const expected = await want[k]!.data();
      // the tensors PEFT's merged model changed are exactly the ones we return
      if (maxRelativeError(await base[key]!.data(), expected) > 0) {
        changed++;
        expect(merged[key], `${name} ${key} must be merged`).toBeDefined();
      }
      expect(maxRelativeError(await got!.data(), expected), `${name} ${key}`).toBeLessThan(1e-5);
    }
    expect(changed).toBeGreaterThan(2);
    tf.dispose([...Object.values(merged), ...Object.values(a.tensors)]);
  }
  expect(tf.memory().numTensors).toBe(before);
  // a whole tensor of another shape names both
  const a = adapter('merge-replaced-mts');
  const wrong = { ...base, 'head.weight': tf.zeros([3, 8]) };
  expect(() => mergeAdapterWeights(wrong, a)).toThrow(
    /base_model\.model\.head\.weight.*\[4, 8\] replaces the base's 'head\.weight' \[3, 8\]/,
  );
  tf.dispose([wrong['head.weight']!, ...Object.values(a.tensors)]);
  tf.dispose(Object.values(base));
  tf.dispose(Object.values(want));
});
