import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it, vi } from 'vitest';
import { initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { LayerNorm, Linear, Module, manualSeed } from '@lora/nn';
import { type LoraLinear, getPeftModel, loadAdapter, loraConfig } from '@lora/core';
import { FIX, baseNet, readFixture } from './fixture-nets.test-util';

beforeAll(async () => {
  await initBackend('cpu');
});

it("setAdapter on a merged model unmerges first, with PEFT's warning, so the new adapter runs alone", async () => {
  const fixture = readFixture('expected.safetensors');
  const x = fixture.x as tf.Tensor;
  manualSeed(8);
  const peft = getPeftModel(baseNet(), { r: 2, targetModules: ['q_proj', 'mlp'], initLoraWeights: false });
  peft.addAdapter('b', loraConfig({ r: 2, targetModules: ['q_proj'], initLoraWeights: false }));
  peft.setAdapter('b');
  const yB = peft.call(x) as tf.Tensor;
  peft.setAdapter('default');
  peft.mergeAdapter();
  const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
  peft.setAdapter('b');
  expect(warn).toHaveBeenCalledWith('Adapter cannot be set when the model is merged. Unmerging the model first.');
  warn.mockRestore();
  for (const [, l] of peft.loraLayers()) expect(l.mergedAdapters).toEqual([]);
  const y = peft.call(x) as tf.Tensor;
  expect(maxRelativeError(await y.data(), await yB.data())).toBeLessThan(1e-6);
  expect((peft.model.getSubmodule('layers.0.mlp') as LoraLinear).activeAdapters).toEqual([]);
  tf.dispose([...Object.values(fixture), yB, y]);
  peft.dispose();
});

it('loadAdapter that fails (a shape mismatch) leaves the model as it was: no adapter, no LoRA layers, weights untouched', async () => {
  const before = tf.memory().numTensors;
  const config = JSON.parse(readFileSync(join(FIX, 'peft-qv', 'adapter_config.json'), 'utf8'));
  const files = {
    'adapter_config.json': JSON.stringify({ ...config, r: 2 }),
    'adapter_model.safetensors': new Uint8Array(readFileSync(join(FIX, 'peft-qv', 'adapter_model.safetensors'))),
  };
  const net = baseNet();
  const w0 = Array.from(await net.layers.at(0).getSubmodule('q_proj').getParameter('weight')!.data());
  await expect(loadAdapter(net, files)).rejects.toThrow(
    /shape \[4, 8\] does not fit the model's \[2, 8\]; was the adapter trained on another base model or rank\?/,
  );
  expect(net.getSubmodule('layers.0.q_proj').constructor.name).toBe('Linear');
  expect(Array.from(await net.getSubmodule('layers.0.q_proj').getParameter('weight')!.data())).toEqual(w0);

  const { model: peft } = await loadAdapter(net, join(FIX, 'peft-qv'));
  await expect(loadAdapter(peft, files, { adapterName: 'bad' })).rejects.toThrow(/does not fit/);
  expect(peft.adapters).toEqual(['default']);
  for (const [, l] of peft.loraLayers()) expect([...l.settings.keys()]).toEqual(['default']);
  peft.dispose();
  expect(tf.memory().numTensors).toBe(before);
});

it('addAdapter that fails on a later target leaves no trace: earlier layers unwrapped, other adapters untouched', () => {
  class WithNorm extends Module {
    lin = this.registerModule('lin', new Linear(4, 4));
    norm = this.registerModule('norm', new LayerNorm(4));
    head = this.registerModule('head', new Linear(4, 2));
    forward(x: tf.Tensor): tf.Tensor {
      return this.head.call(this.norm.call(this.lin.call(x))) as tf.Tensor;
    }
  }
  const before = tf.memory().numTensors;
  const model = new WithNorm();
  const withWeights = tf.memory().numTensors;
  expect(() => getPeftModel(model, { targetModules: ['lin', 'norm'], modulesToSave: ['head'] })).toThrow(
    /Target module norm \(LayerNorm\) is not supported/,
  );
  expect([model.lin.constructor.name, model.getSubmodule('head').constructor.name]).toEqual(['Linear', 'Linear']);
  expect(tf.memory().numTensors).toBe(withWeights);

  const peft = getPeftModel(model, { targetModules: ['lin'], modulesToSave: ['head'] });
  expect(() => peft.addAdapter('b', loraConfig({ targetModules: ['lin', 'norm'], modulesToSave: ['head'] }))).toThrow(
    /not supported/,
  );
  expect(peft.adapters).toEqual(['default']);
  for (const [, l] of peft.loraLayers()) expect([...l.settings.keys()]).toEqual(['default']);
  for (const [, w] of peft.modulesToSaveWrappers()) expect(w.modulesToSave.keys()).toEqual(['default']);
  peft.dispose();
  expect(tf.memory().numTensors).toBe(before);
});

it("several adapters active at once add up as PEFT's set_adapter([...]): output, trainable parameters, merge", async () => {
  const before = tf.memory().numTensors;
  const want = readFixture('multi-active-expected.safetensors');
  const peftSays = JSON.parse(readFileSync(join(FIX, 'multi-active.json'), 'utf8')) as {
    active_adapters: string[];
    trainable: string[];
  };
  const { model: peft } = await loadAdapter(baseNet(), join(FIX, 'weighted-a'), {
    adapterName: 'a',
    isTrainable: true,
  });
  await loadAdapter(peft, join(FIX, 'weighted-b'), { adapterName: 'b', isTrainable: true });
  peft.setAdapter(['a', 'b']);
  peft.eval();
  expect(peft.activeAdapters).toEqual(peftSays.active_adapters);
  expect(
    [...peft.namedParameters()]
      .filter(([, p]) => p.trainable)
      .map(([n]) => n)
      .sort(),
  ).toEqual(peftSays.trainable);
  const y = peft.call(want.x) as tf.Tensor;
  expect(maxRelativeError(await y.data(), await want['both.out']!.data())).toBeLessThan(1e-5);
  y.dispose();
  // deleting one keeps the other active, as PEFT
  const copy = await loadAdapter(baseNet(), join(FIX, 'weighted-a'), { adapterName: 'a' });
  await loadAdapter(copy.model, join(FIX, 'weighted-b'), { adapterName: 'b' });
  copy.model.setAdapter(['a', 'b']);
  copy.model.deleteAdapter('a');
  expect(copy.model.activeAdapters).toEqual(['b']);
  copy.model.dispose();
  const merged = peft.mergeAndUnload() as Module;
  for (const k of ['layers.0.q_proj.weight', 'layers.1.mlp.weight']) {
    expect(
      maxRelativeError(await (merged.stateDict()[k] as tf.Tensor).data(), await want[`both.merged.${k}`]!.data()),
      k,
    ).toBeLessThan(1e-5);
  }
  merged.dispose();
  tf.dispose(Object.values(want));
  expect(tf.memory().numTensors).toBe(before);
});

it('a modules_to_save module serves one adapter at a time, as PEFT', () => {
  const peft = getPeftModel(baseNet(), { targetModules: ['q_proj'], modulesToSave: ['head'] });
  peft.addAdapter('b', loraConfig({ targetModules: ['q_proj'], modulesToSave: ['head'] }));
  expect(() => peft.setAdapter(['default', 'b'])).toThrow(
    'Attempted to set multiple (["default","b"]) adapters at once for modules_to_save (head).',
  );
  expect(peft.activeAdapters).toEqual(['default']);
  expect(() => peft.setAdapter(['default', 'nope'])).toThrow('Adapter nope not found.');
  peft.dispose();
});
