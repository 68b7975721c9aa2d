
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { FIX, readAdapterFiles, readFixture } from './fixture-nets.test-util';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { Conv1d, Conv2d, Module, manualSeed, withoutInit } from '@lora/nn';
import { getPeftModel, loadAdapter, mergeAdapterWeights } from '@lora/core';

const read = readFixture;

/** The ConvNet of tools/oracle/peft_fixtures_net.py. */
class ConvNet extends Module {
  conv = this.registerModule('conv', new Conv2d(3, 6, [3, 3], { stride: 2, padding: 1 }));
  conv1d = this.registerModule('conv1d', new Conv1d(6, 5, 3, { padding: 1 }));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.relu(this.conv.call(x) as tf.Tensor);
      return this.conv1d.call(tf.reshape(h, [h.shape[0] as number, h.shape[1] as number, -1]));
    });
  }
}

function base(): ConvNet {
  const net = withoutInit(() => new ConvNet());
  const t = read('conv-base.safetensors');
  net.loadStateDict(t);
  tf.dispose(Object.values(t));
  return net;
}

await describeEachBackend('LoRA on Conv2d and Conv1d', () => {
  it("loads PEFT's conv adapter (with lora_bias), gives its output and merged kernels, and initialises as PEFT", async () => {
    const want = read('conv-expected.safetensors');
    const before = tf.memory().numTensors;
    const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(base(), join(FIX, 'peft-conv'));
    expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
    const y = peft.call(want.x) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await want.out!.data())).toBeLessThan(1e-5);
    y.dispose();
    const merged = peft.mergeAndUnload() as ConvNet;
    expect(maxRelativeError(await merged.conv.weight.data(), await want['merged.conv.weight']!.data())).toBeLessThan(1e-5);
    expect(maxRelativeError(await merged.conv1d.weight.data(), await want['merged.conv1d.weight']!.data())).toBeLessThan(1e-5);
    expect(maxRelativeError(await merged.conv1d.bias!.data(), await want['merged.conv1d.bias']!.data())).toBeLessThan(1e-5);
    merged.dispose();
    expect(tf.memory().numTensors).toBe(before);

    // the same merge on weight files, by name
    const baseFile = read('conv-base.safetensors');
    const adapter = readAdapterFiles('peft-conv');
    const byName = mergeAdapterWeights(baseFile, adapter).merged;
    expect(maxRelativeError(await byName['conv.weight']!.data(), await want['merged.conv.weight']!.data())).toBeLessThan(1e-5);
    expect(maxRelativeError(await byName['conv1d.bias']!.data(), await want['merged.conv1d.bias']!.data())).toBeLessThan(1e-5);
    tf.dispose([...Object.values(baseFile), ...Object.values(adapter.tensors), ...Object.values(byName)]);

    manualSeed(53);
    const fresh = getPeftModel(base(), { r: 2, loraAlpha: 4, targetModules: ['conv'] });
    for (const [n, p] of fresh.namedParameters()) {
      if (n.includes('lora_')) expect(maxRelativeError(await p.data(), await want[`init.${n}`]!.data()), n).toBe(0);
    }
    fresh.dispose();
    tf.dispose(Object.values(want));
  });
});
