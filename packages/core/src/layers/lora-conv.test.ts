import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type ConvNet, FIX, convNet, readAdapterFiles, readFixture } from '../fixture-nets.test-util';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { manualSeed } from '@lora/nn';
import { getPeftModel, loadAdapter, mergeAdapterWeights } from '@lora/core';

const read = readFixture;

await describeEachBackend('LoRA on Conv2d and Conv1d', () => {
  it("loads PEFT's conv adapter (with lora_bias), gives its output and merged kernels, and initialises as PEFT", async () => {
    const want = read('conv-expected.safetensors');
    const before = tf.memory().numTensors;
    const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(convNet(), join(FIX, 'peft-conv'));
    expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
    const y = peft.call(want.x) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await want.out!.data())).toBeLessThan(1e-5);
    y.dispose();
    const merged = peft.mergeAndUnload() as ConvNet;
    expect(maxRelativeError(await merged.conv.weight.data(), await want['merged.conv.weight']!.data())).toBeLessThan(
      1e-5,
    );
    expect(
      maxRelativeError(await merged.conv1d.weight.data(), await want['merged.conv1d.weight']!.data()),
    ).toBeLessThan(1e-5);
    expect(maxRelativeError(await merged.conv1d.bias!.data(), await want['merged.conv1d.bias']!.data())).toBeLessThan(
      1e-5,
    );
    merged.dispose();
    expect(tf.memory().numTensors).toBe(before);

    // the same merge on weight files, by name
    const baseFile = read('conv-base.safetensors');
    const adapter = readAdapterFiles('peft-conv');
    const byName = mergeAdapterWeights(baseFile, adapter).merged;
    expect(
      maxRelativeError(await byName['conv.weight']!.data(), await want['merged.conv.weight']!.data()),
    ).toBeLessThan(1e-5);
    expect(
      maxRelativeError(await byName['conv1d.bias']!.data(), await want['merged.conv1d.bias']!.data()),
    ).toBeLessThan(1e-5);
    tf.dispose([...Object.values(baseFile), ...Object.values(adapter.tensors), ...Object.values(byName)]);

    manualSeed(53);
    const fresh = getPeftModel(convNet(), { r: 2, loraAlpha: 4, targetModules: ['conv'] });
    const initNames = [...fresh.namedParameters()].map(([n]) => n).filter((n) => n.includes('lora_'));
    expect(initNames.map((n) => `init.${n}`).sort()).toEqual(
      Object.keys(want)
        .filter((k) => k.startsWith('init.'))
        .sort(),
    );
    for (const [n, p] of fresh.namedParameters()) {
      if (n.includes('lora_')) expect(maxRelativeError(await p.data(), await want[`init.${n}`]!.data()), n).toBe(0);
    }
    fresh.dispose();
    tf.dispose(Object.values(want));
  });
});
