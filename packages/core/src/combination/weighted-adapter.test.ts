import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { Linear, Module, manualSeed, withoutInit } from '@lora/nn';
import { FIX, Net, readFixture } from '../fixture-nets.test-util';
import { type CombinationType, type LoraLinear, addWeightedAdapter, getPeftModel, loadAdapter } from '@lora/core';

const combos: [string, CombinationType, Record<string, unknown>][] = [
  ['linear', 'linear', {}],
  ['cat', 'cat', {}],
  ['svd', 'svd', { svdRank: 3 }],
  ['ties', 'ties', { density: 0.5 }],
  ['ties_frequency', 'ties', { density: 0.5, majoritySignMethod: 'frequency' }],
  ['magnitude_prune', 'magnitude_prune', { density: 0.6 }],
  ['ties_svd', 'ties_svd', { density: 0.5, svdRank: 4 }],
  ['magnitude_prune_svd', 'magnitude_prune_svd', { density: 0.6, svdRank: 2 }],
];

describe('addWeightedAdapter against PEFT 0.21', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  it("gives PEFT's delta weights and outputs for every deterministic combination type", async () => {
    const net = withoutInit(() => new Net());
    const base = readFixture('base.safetensors');
    net.loadStateDict(base);
    const want = readFixture('weighted.safetensors');
    const x = readFixture('expected.safetensors');
    const { model: peft } = await loadAdapter(net, join(FIX, 'weighted-a'), { adapterName: 'a' });
    await loadAdapter(peft, join(FIX, 'weighted-b'), { adapterName: 'b' });
    peft.eval();
    // mixed batch: rows through a, b, no adapter, a, b — PEFT's adapter_names
    const mixed = peft.forwardMixed(['a', 'b', '__base__', 'a', 'b'], x.x) as tf.Tensor;
    expect(maxRelativeError(await mixed.data(), await want['mixed.out']!.data())).toBeLessThan(1e-5);
    // the same through call(x, { adapterNames }), PEFT's keyword
    const viaCall = peft.call(x.x, { adapterNames: ['a', 'b', '__base__', 'a', 'b'] }) as tf.Tensor;
    expect(Array.from(await viaCall.data())).toEqual(Array.from(await mixed.data()));
    tf.dispose([mixed, viaCall]);
    expect(() => peft.forwardMixed(['a', 'zzz', 'a', 'a', 'a'], x.x)).toThrow(
      'Trying to infer with non-existing adapter(s): zzz',
    );
    for (const [label, type, extra] of combos) {
      const before = tf.memory().numTensors;
      await addWeightedAdapter(peft, ['a', 'b'], [0.5, 1.5], label, { combinationType: type, ...extra });
      expect(tf.memory().numTensors - before, `${label} leaves only its A and B on four layers`).toBe(8);
      peft.setAdapter(label);
      for (const path of ['layers.0.q_proj', 'layers.1.mlp']) {
        const delta = (peft.model.getSubmodule(path) as LoraLinear).getDeltaWeight(label);
        // SVD factors carry arbitrary signs; their product, the delta, does not
        expect(
          maxRelativeError(await delta.data(), await want[`${label}.delta.${path}`]!.data()),
          `${label} ${path}`,
        ).toBeLessThan(1e-4);
        delta.dispose();
      }
      const y = peft.call(x.x) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await want[`${label}.out`]!.data()), label).toBeLessThan(1e-4);
      y.dispose();
    }
    // DARE prunes at random (seeded here; torch's masks cannot be reproduced): check shape and memory only
    for (const type of ['dare_linear', 'dare_ties', 'dare_linear_svd', 'dare_ties_svd'] as const) {
      const before = tf.memory().numTensors;
      await addWeightedAdapter(peft, ['a', 'b'], [0.5, 1.5], type, {
        combinationType: type,
        density: 0.5,
        svdRank: 4,
        seed: 1,
      });
      expect(tf.memory().numTensors - before, type).toBe(8);
      const delta = (peft.model.getSubmodule('layers.1.mlp') as LoraLinear).getDeltaWeight(type);
      expect(delta.shape).toEqual([16, 8]);
      expect(Array.from(await delta.data()).some((v) => v !== 0)).toBe(true);
      delta.dispose();
    }
    // the combined adapters are created frozen, as PEFT does
    expect(peft.trainableParameters().length).toBe(0);
    await expect(addWeightedAdapter(peft, ['a', 'nope'], [1, 1], 'z')).rejects.toThrow('Adapter nope does not exist');
    const before = tf.memory().numTensors;
    peft.deleteAdapter('linear');
    expect(peft.adapters).not.toContain('linear');
    expect(tf.memory().numTensors).toBe(before - 8);
    tf.dispose([...Object.values(base), ...Object.values(want), ...Object.values(x)]);
    peft.dispose();
  });

  it('rejects linear combinations of different ranks, as PEFT does', async () => {
    const net = withoutInit(() => new Net());
    const { model: peft } = await loadAdapter(net, join(FIX, 'weighted-a'), { adapterName: 'a' });
    await loadAdapter(peft, join(FIX, 'peft-regex-bias'), { adapterName: 'c' });
    await expect(addWeightedAdapter(peft, ['a', 'c'], [1, 1], 'mix', { combinationType: 'linear' })).rejects.toThrow(
      'All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear.',
    );
    peft.dispose();
  });
});

it('call(x, { adapterNames, ...rest }) runs a mixed batch and passes the rest of the options to the model', async () => {
  class WithOptions extends Module {
    lin = this.registerModule('lin', new Linear(2, 2));
    forward(x: tf.Tensor, options?: { scale?: number }): tf.Tensor {
      return tf.tidy(() => tf.mul(this.lin.call(x) as tf.Tensor, options?.scale ?? 1));
    }
  }
  manualSeed(1);
  const peft = getPeftModel(new WithOptions(), { r: 1, targetModules: ['lin'], initLoraWeights: false });
  const x = tf.ones([2, 2]);
  const plain = peft.forwardMixed(['default', '__base__'], x, { scale: 3 }) as tf.Tensor;
  const viaCall = peft.call(x, { scale: 3, adapterNames: ['default', '__base__'] }) as tf.Tensor;
  const unscaled = peft.call(x, { adapterNames: ['default', '__base__'] }) as tf.Tensor;
  expect(Array.from(await viaCall.data())).toEqual(Array.from(await plain.data()));
  expect(
    maxRelativeError(
      Float32Array.from(await unscaled.data(), (v) => v * 3),
      await plain.data(),
    ),
  ).toBeLessThan(1e-6);
  tf.dispose([x, plain, viaCall, unscaled]);
  peft.dispose();
});
