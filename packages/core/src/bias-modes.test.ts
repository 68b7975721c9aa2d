import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { withoutInit } from '@lora/nn';
import { adapterStateDict, getPeftModel, loraConfig } from '@lora/core';
import { FIX, Net } from './fixture-nets.test-util';

const peft = JSON.parse(readFileSync(join(FIX, 'bias-modes.json'), 'utf8')) as Record<
  string,
  { saved: string[]; trainable: string[] }
>;

beforeAll(async () => {
  await initBackend('cpu');
});

for (const bias of ['lora_only', 'all'] as const) {
  it(`bias '${bias}': trains and saves the parameters PEFT does`, () => {
    const model = getPeftModel(
      withoutInit(() => new Net()),
      { r: 2, targetModules: ['q_proj'], bias },
    );
    const trainable = [...model.namedParameters()]
      .filter(([, p]) => p.trainable)
      .map(([n]) => n)
      .sort();
    expect(trainable).toEqual(peft[bias]!.trainable);
    expect(Object.keys(adapterStateDict(model)).sort()).toEqual(peft[bias]!.saved);
    model.dispose();
  });
}

it('allows only one adapter with a bias mode, as PEFT', () => {
  const model = getPeftModel(
    withoutInit(() => new Net()),
    { r: 2, targetModules: ['q_proj'], bias: 'all' },
  );
  expect(() => model.addAdapter('second', { ...model.peftConfig.get('default')!, bias: 'lora_only' })).toThrow(
    "LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all adapters.",
  );
  model.dispose();
});

it("bias 'all' with modules_to_save saves the copies' biases under PEFT's names: adapter name removed, other adapters left out", () => {
  const model = getPeftModel(
    withoutInit(() => new Net()),
    { r: 2, targetModules: ['q_proj'], bias: 'all', modulesToSave: ['head'] },
  );
  model.addAdapter('other', loraConfig({ r: 2, targetModules: ['v_proj'], modulesToSave: ['head'] }));
  const keys = Object.keys(adapterStateDict(model));
  expect(keys).toContain('base_model.model.head.modules_to_save.bias');
  expect(keys).toContain('base_model.model.head.original_module.bias');
  expect(keys.filter((k) => k.split('.').includes('default') || k.split('.').includes('other'))).toEqual([]);
  model.dispose();
});
