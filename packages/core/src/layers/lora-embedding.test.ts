import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type EmbNet, FIX, embNet, readFixture } from '../fixture-nets.test-util';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { manualSeed } from '@lora/nn';
import { adapterStateDict, getPeftModel, loadAdapter } from '@lora/core';

await describeEachBackend('LoRA on Embedding', () => {
  it("loads PEFT's lora_embedding_A/B, gives its output and merged table, and initialises as PEFT after the same seed", async () => {
    const want = readFixture('emb-expected.safetensors');
    const before = tf.memory().numTensors;
    const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(embNet(), join(FIX, 'peft-embedding'));
    expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
    expect(Object.keys(adapterStateDict(peft)).sort()).toEqual([
      'base_model.model.embed.lora_embedding_A',
      'base_model.model.embed.lora_embedding_B',
      'base_model.model.lin.lora_A.weight',
      'base_model.model.lin.lora_B.weight',
    ]);
    const y = peft.call(want.ids) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await want.out!.data())).toBeLessThan(1e-5);
    y.dispose();
    const merged = peft.mergeAndUnload() as EmbNet;
    expect(maxRelativeError(await merged.embed.weight.data(), await want['merged.embed.weight']!.data())).toBeLessThan(
      1e-5,
    );
    merged.dispose();
    expect(tf.memory().numTensors).toBe(before);

    manualSeed(42);
    const fresh = getPeftModel(embNet(), { r: 3, loraAlpha: 6, targetModules: ['embed'] });
    const initNames = [...fresh.namedParameters()].map(([n]) => n).filter((n) => n.includes('lora_'));
    expect(initNames.map((n) => `init.${n}`).sort()).toEqual(
      Object.keys(want)
        .filter((k) => k.startsWith('init.'))
        .sort(),
    );
    for (const [n, p] of fresh.namedParameters()) {
      if (!n.includes('lora_')) continue;
      // A is zero; B is N(0, 1) drawn after the constructor's draws, as PEFT does (normals to float32 rounding)
      expect(maxRelativeError(await p.data(), await want[`init.${n}`]!.data()), n).toBeLessThan(1e-6);
    }
    fresh.dispose();
    tf.dispose(Object.values(want));
  });
});
