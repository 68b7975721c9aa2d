import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { FIX, combineNet, readAdapterFiles, readFixture } from '../fixture-nets.test-util';
import {
  type AdapterFiles,
  type CombinationType,
  type PeftModel,
  type WeightedAdapterOptions,
  addWeightedAdapter,
  adapterStateDict,
  combineAdapters,
  loadAdapter,
  loraConfig,
  loraConfigToJson,
} from '@lora/core';

// the combinations of tools/oracle/combine_fixtures.py: label → adapters, weights, options
const AB: [string[], number[]] = [
  ['a', 'b'],
  [0.7, -0.4],
];
const ABC: [string[], number[]] = [
  ['a', 'b', 'c'],
  [0.7, -0.4, 1.2],
];
const COMBOS: [string, string[], number[], WeightedAdapterOptions][] = [
  ['linear', ...AB, { combinationType: 'linear' }],
  ['cat', ...AB, { combinationType: 'cat' }],
  ['svd', ...AB, { combinationType: 'svd' }],
  ['svd_clamp', ...AB, { combinationType: 'svd', svdRank: 3, svdClamp: 0.9 }],
  ['ties', ...AB, { combinationType: 'ties', density: 0.5 }],
  ['ties_frequency', ...AB, { combinationType: 'ties', density: 0.5, majoritySignMethod: 'frequency' }],
  ['magnitude_prune', ...AB, { combinationType: 'magnitude_prune', density: 0.6 }],
  ['ties_svd', ...AB, { combinationType: 'ties_svd', density: 0.5, svdRank: 3 }],
  ['magnitude_prune_svd', ...AB, { combinationType: 'magnitude_prune_svd', density: 0.6 }],
  ['cat3', ...ABC, { combinationType: 'cat' }],
  ['svd3', ...ABC, { combinationType: 'svd' }],
  ['ties_svd3', ...ABC, { combinationType: 'ties_svd', density: 0.7, majoritySignMethod: 'frequency' }],
  ['magnitude_prune_svd3', ...ABC, { combinationType: 'magnitude_prune_svd', density: 0.5, svdRank: 2 }],
  ['solo', ['a'], [1.5], { combinationType: 'svd' }],
];
const isSvd = (o: WeightedAdapterOptions) => (o.combinationType ?? 'svd').endsWith('svd');

/** B·A of one module, both flattened to 2-D (the ΔW before scaling, in PEFT's (out, in) orientation). */
async function product(tensors: Record<string, tf.Tensor>, aKey: string, bKey: string): Promise<Float32Array> {
  const a = tensors[aKey] as tf.Tensor;
  const b = tensors[bKey] as tf.Tensor;
  const r = a.shape[0] as number;
  const p = tf.tidy(() => tf.matMul(tf.reshape(b, [b.shape[0] as number, r]), tf.reshape(a, [r, -1])));
  const v = (await p.data()) as Float32Array;
  p.dispose();
  return v;
}

/** The config fields as PEFT writes them, target_modules as a set (PEFT writes a set in its own order). */
function configJson(text: string): Record<string, unknown> {
  const j = JSON.parse(text) as Record<string, unknown>;
  if (Array.isArray(j.target_modules)) j.target_modules = [...j.target_modules].sort();
  return j;
}

/**
 * Checks a combined adapter against PEFT's (`combine-<label>/`): the config; factor by factor within
 * 1e-5 for the types without an SVD (where PEFT kept a narrower rank, ours holds the same factors
 * zero-padded); through B·A within 1e-4 for the svd types (SVD factors carry arbitrary signs).
 */
async function expectPeftCombination(
  label: string,
  options: WeightedAdapterOptions,
  config: string,
  tensors: Record<string, tf.Tensor>,
): Promise<void> {
  const peft = readAdapterFiles(`combine-${label}`);
  const peftConfig = readFileSync(join(FIX, `combine-${label}`, 'adapter_config.json'), 'utf8');
  expect(configJson(config), `${label} config`).toEqual(configJson(peftConfig));
  expect(Object.keys(tensors).sort(), label).toEqual(Object.keys(peft.tensors).sort());
  for (const [key, want] of Object.entries(peft.tensors)) {
    const got = tensors[key] as tf.Tensor;
    if (key.endsWith('B.weight') || key.endsWith('embedding_B')) continue;
    const bKey = key.replace('lora_A', 'lora_B').replace('embedding_A', 'embedding_B');
    if (isSvd(options)) {
      expect(
        maxRelativeError(await product(tensors, key, bKey), await product(peft.tensors, key, bKey)),
        `${label} ${key} B·A`,
      ).toBeLessThan(1e-4);
      continue;
    }
    for (const [k, w] of [
      [key, want],
      [bKey, peft.tensors[bKey] as tf.Tensor],
    ] as const) {
      const ours = tensors[k] as tf.Tensor;
      const axis = k === key ? 0 : 1;
      const r = w.shape[axis] as number;
      const head = tf.tidy(() => (axis === 0 ? tf.slice(ours, 0, r) : tf.slice(ours, [0, 0], [-1, r])));
      expect(maxRelativeError(await head.data(), await w.data()), `${label} ${k}`).toBeLessThan(1e-5);
      const rest = tf.tidy(() => tf.max(tf.abs(axis === 0 ? tf.slice(ours, r) : tf.slice(ours, [0, r], [-1, -1]))));
      if ((ours.shape[axis] as number) > r) expect((await rest.data())[0], `${label} ${k} zero padding`).toBe(0);
      tf.dispose([head, rest]);
    }
    expect(got.shape[0], `${label} ${key} rank`).toBe(JSON.parse(config).r);
  }
  tf.dispose(Object.values(peft.tensors));
}

async function outputWith(files: AdapterFiles): Promise<tf.Tensor> {
  const inputs = readFixture('combine-base.safetensors');
  const weights = await serializeSafetensors(files.tensors, { metadata: { format: 'pt' } });
  const { model, missingKeys, unexpectedKeys } = await loadAdapter(combineNet(), {
    'adapter_config.json': loraConfigToJson(files.config),
    'adapter_model.safetensors': weights,
  });
  expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
  const y = model.call(inputs.ids, inputs.img) as tf.Tensor;
  model.dispose();
  tf.dispose(Object.values(inputs));
  return y;
}

const sources = (names: string[]) => names.map((n) => readAdapterFiles(`combine-${n}`));

beforeAll(async () => {
  await initBackend('cpu');
});

describe('combineAdapters against PEFT 0.21 (Linear, Embedding, Conv2d 3×3 and 1×1, Conv1d)', () => {
  it("gives PEFT's combined adapter (config, factors) and PEFT's outputs for every deterministic combination type", async () => {
    const want = readFixture('combine-expected.safetensors');
    for (const [label, names, weights, options] of COMBOS) {
      const inputs = sources(names);
      const before = tf.memory().numTensors;
      const warnings: string[] = [];
      const mix = await combineAdapters(inputs, weights, { ...options, warn: (m) => warnings.push(m) });
      expect(tf.memory().numTensors - before, `${label} returns only its tensors`).toBe(
        Object.keys(mix.tensors).length,
      );
      expect(warnings, label).toEqual([]);
      await expectPeftCombination(label, options, loraConfigToJson(mix.config), mix.tensors);
      const y = await outputWith(mix);
      expect(maxRelativeError(await y.data(), await want[`${label}.out`]!.data()), `${label} output`).toBeLessThan(
        isSvd(options) ? 1e-4 : 1e-5,
      );
      tf.dispose([y, ...Object.values(mix.tensors), ...inputs.flatMap((a) => Object.values(a.tensors))]);
    }
    tf.dispose(Object.values(want));
  });

  it('combines fan_in_fan_out adapters (a GPT-2 Conv1D) as PEFT, whose svd types transpose ΔW there and back', async () => {
    for (const [label, options] of [
      ['svd', { combinationType: 'svd' }],
      ['linear', { combinationType: 'linear' }],
      ['ties_svd', { combinationType: 'ties_svd', density: 0.5 }],
    ] as const) {
      const inputs = ['a', 'b'].map((n) => readAdapterFiles(`combine-fifo-${n}`));
      expect(inputs[0]!.config.fanInFanOut).toBe(true);
      const mix = await combineAdapters(inputs, [0.6, 0.9], options);
      const peft = readAdapterFiles(`combine-fifo-${label}`);
      expect(mix.config.fanInFanOut).toBe(true);
      expect(configJson(loraConfigToJson(mix.config))).toEqual(
        configJson(readFileSync(join(FIX, `combine-fifo-${label}`, 'adapter_config.json'), 'utf8')),
      );
      const [aKey, bKey] = ['base_model.model.c_attn.lora_A.weight', 'base_model.model.c_attn.lora_B.weight'];
      if (label === 'linear') {
        for (const k of [aKey, bKey])
          expect(maxRelativeError(await mix.tensors[k]!.data(), await peft.tensors[k]!.data()), k).toBeLessThan(1e-5);
      } else
        expect(
          maxRelativeError(await product(mix.tensors, aKey, bKey), await product(peft.tensors, aKey, bKey)),
          label,
        ).toBeLessThan(1e-4);
      tf.dispose([
        ...Object.values(mix.tensors),
        ...Object.values(peft.tensors),
        ...inputs.flatMap((a) => Object.values(a.tensors)),
      ]);
    }
  });
});

async function modelWith(names: string[]): Promise<PeftModel> {
  let model: PeftModel | undefined;
  for (const n of names)
    model = (await loadAdapter(model ?? combineNet(), join(FIX, `combine-${n}`), { adapterName: n })).model;
  return model as PeftModel;
}

describe('addWeightedAdapter on convolutions and embeddings, against PEFT 0.21', () => {
  it("gives PEFT's combined adapter and outputs on Conv2d, 1×1 Conv2d, Conv1d, Embedding and Linear layers", async () => {
    const want = readFixture('combine-expected.safetensors');
    const model = await modelWith(['a', 'b', 'c']);
    const inputs = readFixture('combine-base.safetensors');
    for (const [label, names, weights, options] of COMBOS) {
      const before = tf.memory().numTensors;
      await addWeightedAdapter(model, names, weights, label, options);
      expect(tf.memory().numTensors - before, `${label} keeps only its A and B on five layers`).toBe(10);
      const saved = adapterStateDict(model, label);
      await expectPeftCombination(label, options, loraConfigToJson(model.peftConfig.get(label)!), saved);
      // the same factors as the model-free combination: one implementation
      const files = await combineAdapters(sources(names), weights, options);
      for (const [k, t] of Object.entries(files.tensors))
        expect(maxRelativeError(await saved[k]!.data(), await t.data()), `${label} ${k}`).toBe(0);
      model.setAdapter(label);
      const y = model.call(inputs.ids, inputs.img) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await want[`${label}.out`]!.data()), `${label} output`).toBeLessThan(
        isSvd(options) ? 1e-4 : 1e-5,
      );
      tf.dispose([y, ...Object.values(files.tensors)]);
    }
    expect(model.trainableParameters().length).toBe(0);
    model.dispose();
    tf.dispose([...Object.values(want), ...Object.values(inputs)]);
  });

  it('fails cleanly where the ranks differ on one module only (rank patterns), leaving no adapter and no tensor behind', async () => {
    const model = await modelWith(['a']);
    // c's tensors under a config whose largest rank is 4, as a's: the plan passes, module 'lin' (ranks 4 and 3) does not
    const c = readAdapterFiles('combine-c');
    const config = { ...c.config, r: 4, rankPattern: { lin: 3, conv: 2, conv1d: 2 } };
    await loadAdapter(
      model,
      {
        'adapter_config.json': loraConfigToJson(config),
        'adapter_model.safetensors': await serializeSafetensors(c.tensors),
      },
      { adapterName: 'c4' },
    );
    tf.dispose(Object.values(c.tensors));
    const before = tf.memory().numTensors;
    await expect(addWeightedAdapter(model, ['a', 'c4'], [1, 1], 'mix', { combinationType: 'linear' })).rejects.toThrow(
      "the adapters have different ranks on 'lin' (4, 3, from their rank_pattern); combination_type 'linear' needs equal ranks, use cat or an svd type",
    );
    expect(model.adapters).toEqual(['a', 'c4']);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });
});

describe('svd through the factors', () => {
  it('gives the factors of the full decomposition of ΔW (magnitude_prune_svd at density 1), also past the rank of ΔW', async () => {
    for (const svdRank of [3, 6]) {
      const viaFactors = await combineAdapters(sources(['a', 'b']), [0.7, -0.4], { combinationType: 'svd', svdRank });
      const full = await combineAdapters(sources(['a', 'b']), [0.7, -0.4], {
        combinationType: 'magnitude_prune_svd',
        density: 1,
        svdRank,
      });
      for (const k of Object.keys(full.tensors)) {
        if (!k.includes('_A')) continue;
        const bk = k.replace('lora_A', 'lora_B').replace('embedding_A', 'embedding_B');
        expect(
          maxRelativeError(await product(viaFactors.tensors, k, bk), await product(full.tensors, k, bk)),
          `rank ${svdRank} ${k}`,
        ).toBeLessThan(1e-5);
        // with signs fixed as svd_flip, the factors themselves agree where ΔW has that many singular values
        if (svdRank === 3)
          for (const key of [k, bk])
            expect(
              maxRelativeError(await viaFactors.tensors[key]!.data(), await full.tensors[key]!.data()),
              key,
            ).toBeLessThan(1e-4);
        expect(viaFactors.tensors[k]!.shape[0]).toBe(svdRank);
      }
      tf.dispose([...Object.values(viaFactors.tensors), ...Object.values(full.tensors)]);
    }
  });
});

/** An adapter with one Linear module `lin` ([out, in]) whose factors are given. */
function linearAdapter(a: tf.Tensor, b: tf.Tensor, fields: Parameters<typeof loraConfig>[0] = {}): AdapterFiles {
  const r = a.shape[0] as number;
  return {
    config: loraConfig({ r, loraAlpha: r, targetModules: ['lin'], ...fields }),
    tensors: { 'base_model.model.lin.lora_A.weight': a, 'base_model.model.lin.lora_B.weight': b },
  };
}

describe('DARE (random pruning): PyTorch masks cannot be reproduced, so statistics and seeded determinism', () => {
  it('keeps about density of the entries, rescaled by 1/density, the same for the same seed on a model or files', async () => {
    const a = tf.randomNormal([8, 4096], 0, 1, 'float32', 1);
    const b = tf.randomNormal([16, 8], 0, 1, 'float32', 2);
    // with an all-zero partner, dare_linear's A is the pruned A of the first adapter times √(w·s)/density
    const zero = linearAdapter(tf.zerosLike(a), tf.zerosLike(b));
    const one = linearAdapter(a, b);
    for (const type of ['dare_linear', 'dare_ties'] as const) {
      const density = 0.3;
      const before = tf.memory().numTensors;
      const mix = await combineAdapters([one, zero], [4, 1], { combinationType: type, density, seed: 7 });
      expect(tf.memory().numTensors - before).toBe(2);
      const got = (await mix.tensors['base_model.model.lin.lora_A.weight']!.data()) as Float32Array;
      const orig = (await a.data()) as Float32Array;
      let kept = 0;
      let worst = 0;
      for (let i = 0; i < got.length; i++) {
        if (got[i] === 0) continue;
        kept++;
        // c = w·s = 4: A's weight √4 = 2 (dare_linear); TIES divides by the one agreeing task, so also 2·A/d
        worst = Math.max(
          worst,
          Math.abs((got[i] as number) - (2 * (orig[i] as number)) / density) /
            Math.abs((2 * (orig[i] as number)) / density),
        );
      }
      // 32768 Bernoulli(0.3) draws: the kept fraction is within 5 standard deviations (0.0025 each) of 0.3
      expect(Math.abs(kept / got.length - density), type).toBeLessThan(0.0125);
      expect(worst, type).toBeLessThan(1e-6);
      const again = await combineAdapters([one, zero], [4, 1], { combinationType: type, density, seed: 7 });
      const other = await combineAdapters([one, zero], [4, 1], { combinationType: type, density, seed: 8 });
      expect(Array.from((await again.tensors['base_model.model.lin.lora_A.weight']!.data()) as Float32Array)).toEqual(
        Array.from(got),
      );
      expect(maxRelativeError(await other.tensors['base_model.model.lin.lora_A.weight']!.data(), got)).toBeGreaterThan(
        0.1,
      );
      tf.dispose([...Object.values(mix.tensors), ...Object.values(again.tensors), ...Object.values(other.tensors)]);
    }
    tf.dispose([a, b, ...Object.values(zero.tensors)]);
  });

  it('at density 1 equals the type without pruning, and on a model equals the files with the same seed', async () => {
    const pairs: [CombinationType, CombinationType, WeightedAdapterOptions][] = [
      ['dare_linear', 'linear', {}],
      ['dare_ties', 'ties', {}],
      ['dare_linear_svd', 'svd', {}],
      ['dare_ties_svd', 'ties_svd', {}],
    ];
    for (const [dare, plain] of pairs) {
      const x = await combineAdapters(sources(['a', 'b']), [0.7, -0.4], { combinationType: dare, density: 1, seed: 3 });
      const y = await combineAdapters(sources(['a', 'b']), [0.7, -0.4], { combinationType: plain, density: 1 });
      for (const k of Object.keys(y.tensors)) {
        if (!k.includes('_A')) continue;
        const bk = k.replace('lora_A', 'lora_B').replace('embedding_A', 'embedding_B');
        expect(
          maxRelativeError(await product(x.tensors, k, bk), await product(y.tensors, k, bk)),
          `${dare} ${k}`,
        ).toBeLessThan(1e-5);
      }
      tf.dispose([...Object.values(x.tensors), ...Object.values(y.tensors)]);
    }
    const model = await modelWith(['a', 'b']);
    for (const type of ['dare_linear', 'dare_ties', 'dare_linear_svd', 'dare_ties_svd'] as const) {
      const options = { combinationType: type, density: 0.5, seed: 11 };
      const before = tf.memory().numTensors;
      await addWeightedAdapter(model, ['a', 'b'], [0.7, -0.4], type, options);
      expect(tf.memory().numTensors - before, type).toBe(10);
      const files = await combineAdapters(sources(['a', 'b']), [0.7, -0.4], options);
      const saved = adapterStateDict(model, type);
      for (const [k, t] of Object.entries(files.tensors))
        expect(maxRelativeError(await saved[k]!.data(), await t.data()), `${type} ${k}`).toBe(0);
      expect(
        Array.from(await saved['base_model.model.conv.lora_A.weight']!.data()).some((v) => v !== 0),
        type,
      ).toBe(true);
      tf.dispose(Object.values(files.tensors));
    }
    model.dispose();
  });
});

describe('combineAdapters errors', () => {
  it('refuses bad arguments with one clear message each and leaks nothing', async () => {
    const ab = sources(['a', 'b']);
    const abc = sources(['a', 'b', 'c']);
    const before = tf.memory().numTensors;
    const cases: [AdapterFiles[], number[], WeightedAdapterOptions, string][] = [
      [ab, [1], {}, '2 adapters but 1 weights were given; pass one weight per adapter'],
      [ab, [1, Number.NaN], {}, 'the weight of adapter 2 is NaN'],
      [
        ab,
        [1, 1],
        { combinationType: 'average' as CombinationType },
        'Invalid combination_type: average; use one of svd, linear, cat',
      ],
      [
        abc,
        [1, 1, 1],
        { combinationType: 'linear' },
        'All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear. (ranks 4, 4, 3',
      ],
      [ab, [1, 1], { combinationType: 'ties' }, "combination_type 'ties' prunes and needs a density in [0, 1]"],
      [ab, [1, 1], { combinationType: 'magnitude_prune_svd', density: -0.1 }, 'Density should be >= 0, got -0.1'],
      [ab, [1, 1], { combinationType: 'dare_linear', density: 0 }, 'density 0 makes DARE divide by zero'],
      [ab, [1, 1], { combinationType: 'svd', svdClamp: 1.5 }, 'quantile() q must be in the range [0, 1] but got 1.5'],
      [ab, [1, 1], { combinationType: 'svd', svdRank: 2.5 }, 'svdRank must be a positive integer, got 2.5'],
      [
        ab,
        [1, 1],
        { combinationType: 'ties', density: 0.5, majoritySignMethod: 'mean' as 'total' },
        'Unimplemented mask method "mean"',
      ],
      [[], [], {}, 'no adapters to combine'],
    ];
    for (const [adapters, weights, options, message] of cases)
      await expect(combineAdapters(adapters, weights, options), message).rejects.toThrow(message);
    // equal largest ranks but different ranks on one module (rank_pattern): PEFT's torch.stack fails; here a clear error
    const c = abc[2] as AdapterFiles;
    const c4 = { config: { ...c.config, r: 4, rankPattern: { lin: 3 } }, tensors: c.tensors };
    const a = ab[0] as AdapterFiles;
    await expect(
      combineAdapters(
        [a, { config: { ...c4.config, rankPattern: { lin: 3, conv: 2, conv1d: 2 } }, tensors: c.tensors }],
        [1, 1],
        { combinationType: 'linear' },
      ),
    ).rejects.toThrow(
      "the adapters have different ranks on 'conv' (4, 2, from their rank_pattern); combination_type 'linear' needs equal ranks, use cat or an svd type",
    );
    await expect(combineAdapters([a, c4], [1, 1], { combinationType: 'svd' })).rejects.toThrow(
      "adapter 2: 'base_model.model.conv.lora_A.weight' has rank 2 but its config gives 'conv' r=4",
    );
    // adapters of different base models
    const wrong = {
      config: a.config,
      tensors: { ...a.tensors, 'base_model.model.lin.lora_A.weight': tf.zeros([4, 7]) },
    };
    await expect(combineAdapters([a, wrong], [1, 1], { combinationType: 'cat', names: ['x/', 'y/'] })).rejects.toThrow(
      "the adapters disagree on the shape of 'lin' (lora_A [4,6] and [4,7]",
    );
    wrong.tensors['base_model.model.lin.lora_A.weight'].dispose();
    await expect(combineAdapters([{ ...a, config: { ...a.config, bias: 'all' } }, ab[1]!], [1, 1])).rejects.toThrow(
      'LoraModel supports only 1 adapter with bias.',
    );
    await expect(combineAdapters([a, { ...c, config: { ...c.config, targetModules: 'lin' } }], [1, 1])).rejects.toThrow(
      'all adapter configs should follow the same target modules type.',
    );
    const saving = (x: AdapterFiles) => ({ ...x, config: { ...x.config, modulesToSave: ['head'] } });
    await expect(combineAdapters([a, saving(c), saving(c)], [1, 1, 1])).rejects.toThrow(
      'Cannot add weighted adapters if they target the same module with modules_to_save, but found 1 such instance(s). (head)',
    );
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([...ab, ...abc].flatMap((x) => Object.values(x.tensors)));
  });

  it('warns about what it leaves out: modules the combined config does not target, DoRA magnitudes, modules_to_save', async () => {
    const [a, c] = sources(['a', 'c']) as [AdapterFiles, AdapterFiles];
    const warnings: string[] = [];
    // the combined config copies the first adapter's layers_to_transform-free config but c's targets drop 'pw'
    const narrowed = { ...c, config: { ...c.config, excludeModules: ['pw'], useDora: true, modulesToSave: ['head'] } };
    const mix = await combineAdapters([narrowed, a], [1, 1], {
      combinationType: 'cat',
      warn: (m) => warnings.push(m),
      names: ['c/', 'a/'],
    });
    expect(Object.keys(mix.tensors).some((k) => k.includes('.pw.'))).toBe(false);
    expect(mix.config.modulesToSave).toBeNull();
    expect(mix.config.useDora).toBe(false);
    expect(warnings.join('\n')).toMatch(/modules_to_save \["head"\] of c\/ are left out/);
    expect(warnings.join('\n')).toMatch(/c\/ is a DoRA adapter: its magnitudes are not combined/);
    expect(warnings.join('\n')).toMatch(/does not target pw; left out, as PEFT leaves them out/);
    tf.dispose([...Object.values(mix.tensors), ...Object.values(a.tensors), ...Object.values(c.tensors)]);
  });
});
