import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { Linear, manualSeed } from '@lora/nn';
import { LoraLinear, adapterStateDict, getPeftModel, mergeAdapterWeights } from '@lora/core';
import { type Net, baseNet } from './fixture-nets.test-util';

/** A PeftModel on the fixture Net whose adapter is trained-looking, with one NaN in layers.1.mlp's B when `broken`. */
function model(broken: boolean) {
  manualSeed(3);
  const peft = getPeftModel(baseNet(), {
    r: 2,
    loraAlpha: 4,
    targetModules: ['q_proj', 'mlp'],
    initLoraWeights: false,
  });
  if (broken) {
    const b = (peft.model.getSubmodule('layers.1.mlp') as LoraLinear).factorB('default');
    tf.tidy(() =>
      b.assign(tf.where(tf.equal(tf.reshape(tf.range(0, b.size), b.shape), 5), tf.fill(b.shape, Number.NaN), b)),
    );
  }
  return peft;
}

const weights = async (net: Net, path: string) =>
  Array.from(await (net.getSubmodule(path) as unknown as { weight: tf.Tensor }).weight.data());

await describeEachBackend('safe merge (PEFT safe_merge)', () => {
  it('merges a sound adapter as the plain merge does, asynchronously, on every backend', async () => {
    const before = tf.memory().numTensors;
    const plain = model(false).mergeAndUnload() as Net;
    const safePeft = model(false);
    const pending = safePeft.mergeAndUnload({ safeMerge: true });
    expect(pending).toBeInstanceOf(Promise);
    const safe = (await pending) as Net;
    for (const p of ['layers.0.q_proj', 'layers.1.mlp'])
      expect(maxRelativeError(await weights(safe, p), await weights(plain, p)), p).toBe(0);
    plain.dispose();
    safe.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it("refuses a broken adapter with PEFT's error and leaves the base weights untouched; the plain merge does not check", async () => {
    const before = tf.memory().numTensors;
    const peft = model(true);
    const original = await weights(peft.model as Net, 'layers.1.mlp.base_layer');
    await expect(peft.mergeAdapter({ safeMerge: true })).rejects.toThrow(
      'NaNs detected in the merged weights. The adapter default seems to be broken',
    );
    expect(await weights(peft.model as Net, 'layers.1.mlp.base_layer')).toEqual(original);
    await expect(peft.mergeAndUnload({ safeMerge: true })).rejects.toThrow(/NaNs detected/);
    // still a PeftModel with its LoRA layers: nothing was unloaded
    expect(peft.model.getSubmodule('layers.1.mlp').constructor.name).toBe('LoraLinear');
    peft.mergeAdapter();
    expect((await weights(peft.model as Net, 'layers.1.mlp.base_layer')).some(Number.isNaN)).toBe(true);
    peft.unmergeAdapter();

    // the same check on weight files, by name
    const base = peft.model.stateDict();
    const files = Object.fromEntries(
      Object.entries(base)
        .filter(([k]) => k.endsWith('base_layer.weight'))
        .map(([k, t]) => [k.replace('.base_layer', ''), t]),
    );
    const adapter = { config: peft.peftConfig.get('default')!, tensors: adapterStateDict(peft) };
    await expect(mergeAdapterWeights(files, adapter, { safeMerge: true })).rejects.toThrow(
      /NaNs detected .*\(layers\.1\.mlp\.weight\)/,
    );
    // 'warn': every broken weight named, the merge kept
    const warnings: string[] = [];
    const warned = await mergeAdapterWeights(files, adapter, { safeMerge: 'warn', warn: (m) => warnings.push(m) });
    expect(warnings).toEqual([
      "layers.1.mlp.weight has NaN or infinite values after merging: the adapter seems to be broken (kept, as safeMerge is 'warn')",
    ]);
    expect((await warned.merged['layers.1.mlp.weight']!.data()).some(Number.isNaN)).toBe(true);
    tf.dispose(Object.values(warned.merged));
    const unchecked = mergeAdapterWeights(files, adapter);
    expect(Object.keys(unchecked.merged).sort()).toEqual([
      'layers.0.mlp.weight',
      'layers.0.q_proj.weight',
      'layers.1.mlp.weight',
      'layers.1.q_proj.weight',
    ]);
    tf.dispose(Object.values(unchecked.merged));
    peft.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

it('lora_bias on a base without bias: the merge fails before writing anything, and a NaN bias fails the safe merge', async () => {
  manualSeed(4);
  const noBias = new LoraLinear(new Linear(4, 4, { bias: false }), 'a', {
    r: 2,
    loraAlpha: 2,
    loraDropout: 0,
    useRslora: false,
    initLoraWeights: false,
    loraBias: true,
    fanInFanOut: false,
  });
  const w0 = Array.from(await noBias.baseLayer.weight.data());
  for (let i = 0; i < 2; i++)
    expect(() => noBias.merge()).toThrow(
      'Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.',
    );
  expect(Array.from(await noBias.baseLayer.weight.data())).toEqual(w0);
  expect(noBias.mergedAdapters).toEqual([]);
  noBias.dispose();

  const withBias = new LoraLinear(new Linear(4, 4), 'a', {
    r: 2,
    loraAlpha: 2,
    loraDropout: 0,
    useRslora: false,
    initLoraWeights: false,
    loraBias: true,
    fanInFanOut: false,
  });
  const b = withBias.loraB.get('a').bias as tf.Variable;
  tf.tidy(() => b.assign(tf.fill(b.shape, Number.POSITIVE_INFINITY)));
  const before = [
    Array.from(await withBias.baseLayer.weight.data()),
    Array.from(await withBias.baseLayer.bias!.data()),
  ];
  await expect(withBias.merge({ safeMerge: true })).rejects.toThrow(
    'NaNs detected in the merged weights. The adapter a seems to be broken',
  );
  expect([
    Array.from(await withBias.baseLayer.weight.data()),
    Array.from(await withBias.baseLayer.bias!.data()),
  ]).toEqual(before);
  withBias.dispose();
});
