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
