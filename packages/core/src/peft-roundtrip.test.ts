import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { type Module, manualSeed } from '@lora/nn';
import { type LoraConfig, type PeftModel, addWeightedAdapter, adapterStateDict, getPeftModel, loadAdapter, loraConfig, saveAdapter } from '@lora/core';
import { baseNet, readFixture } from './fixture-nets.test-util';

/**
 * Adapters made and trained here, saved in PEFT's layout for `tools/oracle/check_roundtrip.py`, which
 * loads each into PEFT 0.21 and compares PEFT's output with ours. `LORA_ROUNDTRIP_DIR=<dir>` keeps the
 * files; without it they go to a temporary directory and only the round trip through our own loader is
 * checked. Each case directory holds the adapter(s), `base.safetensors` (the base model's weights before
 * wrapping), `io.safetensors` (input `x`, our output `y` per adapter) and `case.json`.
 */
const root = process.env.LORA_ROUNDTRIP_DIR ?? mkdtempSync(join(tmpdir(), 'lora-roundtrip-'));
const index: Record<string, unknown>[] = [];

interface Case {
  name: string;
  /** The Python class in tools/oracle/peft_fixtures_net.py. */
  model: 'Net';
  build: () => Module;
  input: () => tf.Tensor;
  /** Adapters, in order; the first is `default` (saved at the root), the others in sub-folders. */
  adapters: [string, Partial<LoraConfig>][];
  /** Extra steps after the adapters exist (e.g. a weighted combination); returns more adapter names. */
  after?: (peft: PeftModel) => Promise<string[]>;
}

/** Moves every trainable LoRA weight away from its init, as training would. */
function perturb(peft: PeftModel, seed: number): void {
  manualSeed(seed);
  for (const [n, p] of peft.namedParameters()) {
    // every adapter's factors and module copies; base biases only where this adapter trains them (bias 'all')
    if (!n.includes('.lora_') && !n.includes('.modules_to_save.') && !p.trainable) continue;
    tf.tidy(() => p.assign(tf.add(p, tf.mul(tf.randomNormal(p.shape, 0, 1, 'float32', seed + p.size), 0.1))));
  }
}

const netInput = () => tf.tidy(() => tf.clone(readFixture('expected.safetensors').x as tf.Tensor));

const cases: Case[] = [
  {
    name: 'net-dora-rslora-pattern',
    model: 'Net',
    build: baseNet,
    input: netInput,
    adapters: [['default', { r: 4, loraAlpha: 16, useRslora: true, useDora: true, targetModules: ['q_proj', 'mlp', 'head'], initLoraWeights: false, rankPattern: { head: 2 } }]],
  },
  {
    name: 'net-two-adapters',
    model: 'Net',
    build: baseNet,
    input: netInput,
    adapters: [
      ['default', { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'] }],
      ['other', { r: 2, loraAlpha: 3, targetModules: 'layers\\.1\\..*', alphaPattern: { 'layers.1.out': 5 } }],
    ],
  },
  {
    name: 'net-bias-all-modules-to-save',
    model: 'Net',
    build: baseNet,
    input: netInput,
    adapters: [['default', { r: 3, loraAlpha: 6, targetModules: ['mlp', 'out'], bias: 'all', modulesToSave: ['head'], layersToTransform: [0], layersPattern: 'layers' }]],
  },
  {
    name: 'net-all-linear-lora-bias',
    model: 'Net',
    build: baseNet,
    input: netInput,
    adapters: [['default', { r: 4, loraAlpha: 4, targetModules: 'all-linear', loraBias: true, loraDropout: 0.1 }]],
  },
  {
    name: 'net-combined-svd',
    model: 'Net',
    build: baseNet,
    input: netInput,
    adapters: [
      ['default', { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'mlp'] }],
      ['b', { r: 2, loraAlpha: 2, targetModules: ['q_proj', 'out'] }],
    ],
    after: async (peft) => {
      await addWeightedAdapter(peft, ['default', 'b'], [0.7, 0.4], 'mix', { combinationType: 'svd', svdRank: 3 });
      return ['mix'];
    },
  },
];

describe('adapters made here, saved for PEFT (tools/oracle/check_roundtrip.py)', () => {
  beforeAll(() => initBackend('cpu'));
  afterAll(() => {
    if (process.env.LORA_ROUNDTRIP_DIR) writeFileSync(join(root, 'index.json'), JSON.stringify(index, null, 2));
  });

  for (const c of cases) {
    it(`${c.name}: saved, read back by our loader with the same output`, async () => {
      const before = tf.memory().numTensors;
      const dir = join(root, c.name);
      mkdirSync(dir, { recursive: true });
      const model = c.build();
      const baseWeights = await serializeSafetensors(model.stateDict());
      writeFileSync(join(dir, 'base.safetensors'), baseWeights);
      manualSeed(7);
      const [first, ...rest] = c.adapters;
      const peft = getPeftModel(model, first?.[1] as Partial<LoraConfig>);
      for (const [name, config] of rest) peft.addAdapter(name, loraConfig(config));
      perturb(peft, 11);
      const names = [...c.adapters.map(([n]) => n), ...((await c.after?.(peft)) ?? [])];
      peft.eval();
      const x = c.input();
      const io: Record<string, tf.Tensor> = { x };
      for (const n of names) {
        peft.setAdapter(n);
        io[`y.${n}`] = peft.call(x) as tf.Tensor;
      }
      await saveAdapter(peft, dir);
      writeFileSync(join(dir, 'io.safetensors'), await serializeSafetensors(io));
      index.push({ name: c.name, model: c.model, adapters: names });

      // our own loader gives the same outputs from the saved files, adapter by adapter
      for (const n of names) {
        const { model: back, missingKeys, unexpectedKeys } = await loadAdapter(c.build(), n === 'default' ? dir : join(dir, n), { strict: true });
        expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
        const y = back.call(x) as tf.Tensor;
        expect(maxRelativeError(await y.data(), await (io[`y.${n}`] as tf.Tensor).data()), n).toBeLessThan(1e-6);
        y.dispose();
        back.dispose();
      }
      expect(Object.keys(adapterStateDict(peft, names[0])).length).toBeGreaterThan(0);
      tf.dispose(Object.values(io));
      peft.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
