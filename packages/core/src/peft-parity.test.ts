import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, readSafetensorsHeader } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { manualSeed, withoutInit } from '@lora/nn';
import { FIX, Net, baseNet } from './fixture-nets.test-util';
import {
  LoraLinear,
  PeftModel,
  TargetModuleError,
  adapterStateDict,
  getPeftModel,
  loadAdapter,
  loraConfig,
  loraConfigFromJson,
  loraConfigToJson,
  resolveTargets,
  saveAdapter,
} from '@lora/core';

let expected: Record<string, tf.Tensor> | null = null;
const want = (k: string) => {
  expected ??= parseSafetensors(new Uint8Array(readFileSync(join(FIX, 'expected.safetensors')))).tensors;
  const t = expected[k];
  if (!t) throw new Error(`no expected '${k}'`);
  return t;
};

await describeEachBackend('PEFT adapters', () => {
  for (const name of ['peft-qv', 'peft-patterns', 'peft-regex-bias', 'peft-dora']) {
    it(`${name}: a PEFT-saved adapter loads and gives PEFT's outputs and merged weights`, async () => {
      const before = tf.memory().numTensors;
      const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(baseNet(), join(FIX, name));
      expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
      peft.eval();
      expected = null;
      const y = peft.call(want('x')) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await want(`${name}.out`).data())).toBeLessThan(1e-5);
      y.dispose();
      const merged = peft.mergeAndUnload();
      const sd = merged.stateDict();
      for (const k of ['layers.1.mlp.weight', 'layers.0.q_proj.weight', 'layers.0.q_proj.bias']) {
        if (!(`${name}.merged.${k}` in (expected ?? {}))) want(`${name}.merged.${k}`);
        expect(maxRelativeError(await sd[k]!.data(), await want(`${name}.merged.${k}`).data()), k).toBeLessThan(1e-5);
      }
      const fresh = baseNet();
      expect(Object.keys(sd)).toEqual(Object.keys(fresh.stateDict()));
      fresh.dispose();
      merged.dispose();
      tf.dispose(Object.values(expected ?? {}));
      expected = null;
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('initialises A exactly as PEFT after the same seed (B zero)', async () => {
    const net = baseNet();
    manualSeed(5);
    const peft = getPeftModel(net, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'mlp'] });
    // two layers × (q_proj, mlp) × (A, B): every one of them is compared below
    expect([...peft.namedParameters()].filter(([n]) => n.includes('lora_')).length).toBe(8);
    for (const [n, p] of peft.namedParameters()) {
      if (!n.includes('lora_')) continue;
      expect(maxRelativeError(await p.data(), await want(`init.${n}`).data()), n).toBe(0);
    }
    peft.dispose();
    tf.dispose(Object.values(expected ?? {}));
    expected = null;
  });
});

describe('saving in PEFT format', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  it('writes the keys, shapes and config PEFT writes, and reads its own files back', async () => {
    const peftDir = join(FIX, 'peft-patterns');
    const { model: peft } = await loadAdapter(baseNet(), peftDir);
    const out = mkdtempSync(join(tmpdir(), 'lora-adapter-'));
    await saveAdapter(peft, out);
    expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const ours = readSafetensorsHeader(new Uint8Array(readFileSync(join(out, 'adapter_model.safetensors'))));
    const theirs = readSafetensorsHeader(new Uint8Array(readFileSync(join(peftDir, 'adapter_model.safetensors'))));
    const shapes = (h: typeof ours) => Object.fromEntries(h.entries.map((e) => [e.name, [e.dtype, e.shape]]));
    expect(shapes(ours)).toEqual(shapes(theirs));
    expect(ours.metadata).toEqual({ format: 'pt' });
    const ourJson = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    const peftJson = JSON.parse(readFileSync(join(peftDir, 'adapter_config.json'), 'utf8'));
    expect(Object.keys(ourJson).sort()).toEqual(Object.keys(peftJson).sort());
    for (const k of Object.keys(peftJson)) if (k !== 'target_modules') expect(ourJson[k], k).toEqual(peftJson[k]);
    expect([...ourJson.target_modules].sort()).toEqual([...peftJson.target_modules].sort());
    const again = await loadAdapter(baseNet(), out, { strict: true });
    const a = adapterStateDict(peft);
    const b = adapterStateDict(again.model);
    for (const k of Object.keys(a)) expect(maxRelativeError(await b[k]!.data(), await a[k]!.data())).toBe(0);
    peft.dispose();
    again.model.dispose();
  });

  it('keeps unknown config keys from newer PEFT versions, with a warning', () => {
    const warnings: string[] = [];
    const c = loraConfigFromJson(
      { peft_type: 'LORA', target_modules: ['q'], brand_new_option: { a: 1 } },
      { warn: (m) => warnings.push(m) },
    );
    expect(warnings[0]).toMatch(/brand_new_option/);
    expect(JSON.parse(loraConfigToJson(c)).brand_new_option).toEqual({ a: 1 });
    expect(() => loraConfigFromJson({ r: 8 })).toThrow(/missing required keys: \{'peft_type'\}/);
  });
});

describe('configuration and targets', () => {
  it('validates with PEFT wording', () => {
    expect(() => loraConfig({ r: 0 })).toThrow('`r` should be a positive integer value but the value passed is 0');
    expect(() => loraConfig({ targetModules: 'q.*', layersToTransform: [0] })).toThrow(
      '`layers_to_transform` cannot be used when `target_modules` is a str.',
    );
    expect(() => loraConfig({ layersPattern: 'layers' })).toThrow(
      'When `layers_pattern` is specified, `layers_to_transform` must also be specified. ',
    );
    expect(() => loraConfig({ loraBias: true, initLoraWeights: 'gaussian' })).toThrow(
      /lora_bias=True is only supported with init_lora_weights=True or False/,
    );
    expect(() => loraConfig({ initLoraWeights: 'bogus' as 'gaussian' })).toThrow(
      "Unknown initialization init_lora_weights='bogus'",
    );
  });

  it('matches suffixes, regexes, layer filters and excludes as PEFT; unmatched targets name close matches', () => {
    const net = withoutInit(() => new Net());
    const t = (fields: Parameters<typeof loraConfig>[0]) => resolveTargets(net, loraConfig(fields)).targeted;
    expect(t({ targetModules: ['q_proj'] })).toEqual(['layers.0.q_proj', 'layers.1.q_proj']);
    expect(t({ targetModules: ['1.mlp', 'head'] })).toEqual(['layers.1.mlp', 'head']);
    expect(t({ targetModules: 'layers\\.1\\.(q|v)_proj' })).toEqual(['layers.1.q_proj', 'layers.1.v_proj']);
    expect(t({ targetModules: ['q_proj', 'out'], layersToTransform: 0, layersPattern: 'layers' })).toEqual([
      'layers.0.q_proj',
      'layers.0.out',
    ]);
    // without a pattern the index must follow a segment that follows another: a top-level list never matches
    expect(() => t({ targetModules: ['q_proj'], layersToTransform: [1] })).toThrow(TargetModuleError);
    expect(t({ targetModules: 'all-linear', excludeModules: ['mlp'] })).toEqual([
      'layers.0.q_proj',
      'layers.0.v_proj',
      'layers.0.out',
      'layers.1.q_proj',
      'layers.1.v_proj',
      'layers.1.out',
      'head',
    ]);
    expect(() => t({ targetModules: ['q_prj'] })).toThrow(TargetModuleError);
    expect(() => t({ targetModules: ['q_prj'] })).toThrow(
      /Target modules \["q_prj"\] not found in the base model.*Close matches: q_proj/,
    );
    net.dispose();
  });
});

it('DoRA: merge then unmerge restores the base weights, and training moves the magnitudes', async () => {
  await initBackend('cpu');
  const { AdamW, train } = await import('@lora/nn');
  manualSeed(2);
  const peft = getPeftModel(baseNet(), {
    r: 4,
    loraAlpha: 8,
    targetModules: ['mlp'],
    useDora: true,
    initLoraWeights: false,
  });
  const layer = peft.model.getSubmodule('layers.0.mlp') as LoraLinear;
  const w0 = Array.from(await layer.baseLayer.weight.data());
  const x = tf.randomNormal([6, 8], 0, 1, 'float32', 7);
  const before = peft.call(x) as tf.Tensor;
  peft.mergeAdapter();
  // the merge did happen: the adapter is recorded as merged and the base weight moved
  expect(layer.mergedAdapters).toEqual(['default']);
  expect(maxRelativeError(await layer.baseLayer.weight.data(), w0)).toBeGreaterThan(1e-3);
  const merged = peft.call(x) as tf.Tensor;
  expect(maxRelativeError(await merged.data(), await before.data())).toBeLessThan(1e-5);
  peft.unmergeAdapter();
  expect(maxRelativeError(await layer.baseLayer.weight.data(), w0)).toBeLessThan(1e-6);
  const w1 = Array.from(await layer.baseLayer.weight.data());
  const m0 = Array.from(await layer.loraMagnitudeVector.get('default').weight.data());
  const opt = new AdamW(peft.trainableParameters(), { lr: 1e-2 });
  const y = tf.zeros([6, 4]);
  await train(
    peft,
    [
      { x, y },
      { x, y },
    ],
    {
      optimizer: opt,
      loss: (b) => tf.mean(tf.square(tf.sub(peft.call(b.x) as tf.Tensor, b.y))) as tf.Scalar,
      progressBar: false,
    },
  );
  expect(Array.from(await layer.loraMagnitudeVector.get('default').weight.data())).not.toEqual(m0);
  expect(Array.from(await layer.baseLayer.weight.data())).toEqual(w1); // frozen while training
  opt.dispose();
  tf.dispose([x, y, before, merged]);
  peft.dispose();
});

it('trains only the LoRA weights: the loss falls, base weights never change', async () => {
  await initBackend('cpu');
  const { AdamW, train } = await import('@lora/nn');
  const net = baseNet();
  manualSeed(1);
  const peft = getPeftModel(net, { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj', 'mlp'] });
  const base = Object.fromEntries(
    await Promise.all(
      [...peft.namedParameters()]
        .filter(([n]) => !n.includes('lora_'))
        .map(async ([n, p]) => [n, Array.from(await p.data())] as const),
    ),
  );
  // two blocks × (q_proj and v_proj: A 4×8 + B 8×4; mlp: A 4×8 + B 16×4)
  expect(peft.getNbTrainableParameters().trainable).toBe(2 * (2 * (4 * 8 + 8 * 4) + (4 * 8 + 16 * 4)));
  const x = tf.randomNormal([16, 8], 0, 1, 'float32', 3);
  const y = tf.randomNormal([16, 4], 0, 1, 'float32', 4);
  const opt = new AdamW(peft.trainableParameters(), { lr: 1e-2 });
  const r = await train(
    peft,
    Array.from({ length: 30 }, () => ({ x, y })),
    {
      optimizer: opt,
      loss: (b) => tf.mean(tf.square(tf.sub(peft.call(b.x) as tf.Tensor, b.y))) as tf.Scalar,
      progressBar: false,
    },
  );
  expect(r.losses.at(-1)!).toBeLessThan(r.losses[0]! * 0.9);
  for (const [n, p] of peft.namedParameters())
    if (!n.includes('lora_')) expect(Array.from(await p.data()), n).toEqual(base[n]);
  expect([...peft.loraLayers()].every(([, l]) => l instanceof LoraLinear)).toBe(true);
  expect(peft).toBeInstanceOf(PeftModel);
  opt.dispose();
  tf.dispose([x, y]);
  peft.dispose();
});
