import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { Linear } from '@lora/nn';
import { ModulesToSaveWrapper, adapterStateDict, getPeftModel, loadAdapter } from '@lora/core';
import { FIX, type Net, baseNet, readFixture } from '../fixture-nets.test-util';

beforeAll(async () => {
  await initBackend('cpu');
});

it("modules_to_save: PEFT's trained copy loads, runs, disables, saves under the module's names and replaces the module on merge", async () => {
  const want = readFixture('mts-expected.safetensors');
  const x = readFixture('expected.safetensors');
  const before = tf.memory().numTensors;
  const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(baseNet(), join(FIX, 'peft-modules-to-save'));
  expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
  expect(peft.model.getSubmodule('head')).toBeInstanceOf(ModulesToSaveWrapper);
  expect(Object.keys(adapterStateDict(peft)).sort()).toEqual([
    'base_model.model.head.bias',
    'base_model.model.head.weight',
    'base_model.model.layers.0.q_proj.lora_A.weight',
    'base_model.model.layers.0.q_proj.lora_B.weight',
    'base_model.model.layers.1.q_proj.lora_A.weight',
    'base_model.model.layers.1.q_proj.lora_B.weight',
  ]);
  const y = peft.call(x.x) as tf.Tensor;
  expect(maxRelativeError(await y.data(), await want.out!.data())).toBeLessThan(1e-5);
  peft.disableAdapters();
  const off = peft.call(x.x) as tf.Tensor;
  expect(maxRelativeError(await off.data(), await want.disabled_out!.data())).toBeLessThan(1e-5);
  peft.enableAdapters();
  tf.dispose([y, off]);
  const merged = peft.mergeAndUnload() as Net;
  expect(merged.head).toBeInstanceOf(Linear);
  expect(maxRelativeError(await merged.head.weight.data(), await want['head.weight']!.data())).toBeLessThan(1e-6);
  merged.dispose();
  expect(tf.memory().numTensors).toBe(before);
  tf.dispose([...Object.values(want), ...Object.values(x)]);
});

it('modules_to_save copies train while the original stays frozen', () => {
  const peft = getPeftModel(baseNet(), { r: 2, targetModules: ['q_proj'], modulesToSave: ['head'] });
  const trainable = [...peft.namedParameters()].filter(([, p]) => p.trainable).map(([n]) => n);
  expect(trainable).toContain('base_model.model.head.modules_to_save.default.weight');
  expect(trainable).not.toContain('base_model.model.head.original_module.weight');
  peft.dispose();
});
