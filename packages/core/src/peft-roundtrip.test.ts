import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { type Module, manualSeed } from '@lora/nn';
import {
  type AdapterFiles,
  type LoraConfig,
  type LoraEmbedding,
  type PeftModel,
  type SaveEmbeddingLayers,
  addWeightedAdapter,
  adapterStateDict,
  combineAdapters,
  getPeftModel,
  loadAdapter,
  loraConfig,
  loraConfigFromJson,
  loraConfigToJson,
  saveAdapter,
  serializeAdapter,
} from '@lora/core';
import { baseNet, combineNet, convDoraNet, convNet, embNet, gptNet, readFixture } from './fixture-nets.test-util';
import { tokNet } from './token-nets.test-util';

/**
 * Adapters made and trained here, saved in PEFT's layout for `tools/oracle/check_roundtrip.py`, which
 * loads each into PEFT 0.21 and compares PEFT's output with ours. `LORA_ROUNDTRIP_DIR=<dir>` keeps the
 * files; without it they go to a temporary directory. Either way each output is compared with PEFT's
 * own output for the same adapter, as `check_roundtrip.py --write-expected` recorded it
 * (`__fixtures__/roundtrip-peft.safetensors`; the cases are seeded, so they are made identically each run),
 * and with our own loader's output from the saved files. Each case directory holds the adapter(s), `base.safetensors` (the base model's weights before
 * wrapping), `io.safetensors` (the inputs by name, our output `y.<adapter>` per adapter); `index.json`
 * at the top names each case's Python model class, its constructor arguments, inputs and adapters.
 */
const root = process.env.LORA_ROUNDTRIP_DIR ?? mkdtempSync(join(tmpdir(), 'lora-roundtrip-'));
const index: Record<string, unknown>[] = [];
let peftOutputs: Record<string, tf.Tensor> = {};

interface Case {
  name: string;
  /** The Python class, in one of tools/oracle/{peft_fixtures_net,fifo_fixtures_net,combine_net,tokens_net}.py. */
  model: string;
  /** Its constructor's keyword arguments. */
  modelArgs?: Record<string, unknown>;
  /** The base model with its fixture weights. */
  build: () => Module;
  /** The forward pass's arguments, in order, by name (fresh tensors; integer ids stay int32). */
  inputs: () => Record<string, tf.Tensor>;
  /** Adapters, in order; `default` is saved at the root, the others in sub-folders named after them. */
  adapters: [string, Partial<LoraConfig>][];
  /** Steps after training (a weighted combination, a change to the base model); returns the adapters it added. */
  after?: (peft: PeftModel) => Promise<string[]>;
  saveEmbeddingLayers?: SaveEmbeddingLayers;
  /**
   * PiSSA / OLoRA: the adapter is saved into `initial/` right after getPeftModel and, after training, saved
   * converted to plain LoRA (`pathInitialModelForWeightConversion`): loaded on the original base model, it
   * must give the trained model's output.
   */
  convert?: boolean;
  /** How close our own loader comes back (default: exactly); a converted adapter sums in another order. */
  tolerance?: number;
}

/** Moves every trainable adapter weight away from its init, as training would. */
function perturb(peft: PeftModel, seed: number): void {
  manualSeed(seed);
  const seen = new Set<tf.Variable>();
  for (const [n, p] of peft.namedParameters()) {
    // every adapter's factors, magnitudes, token rows and module copies; base biases only where an adapter trains them (bias 'all')
    const adapterWeight =
      n.includes('.lora_') || n.includes('.modules_to_save.') || n.includes('.trainable_tokens_delta.');
    if ((!adapterWeight && !p.trainable) || seen.has(p)) continue;
    seen.add(p);
    tf.tidy(() => p.assign(tf.add(p, tf.mul(tf.randomNormal(p.shape, 0, 1, 'float32', seed + p.size), 0.1))));
  }
}

/** Clones of a fixture file's tensors, by name, in the forward pass's order. */
const fixtureInputs = (file: string, names: string[]) => (): Record<string, tf.Tensor> => {
  const all = readFixture(file);
  const picked = Object.fromEntries(names.map((n) => [n, tf.clone(all[n] as tf.Tensor)]));
  tf.dispose(Object.values(all));
  return picked;
};

/** An adapter of the model as files (config + tensors under PEFT's names); the caller disposes the tensors. */
async function adapterFiles(peft: PeftModel, name: string): Promise<AdapterFiles> {
  const { config, weights } = await serializeAdapter(peft, name);
  return { config: loraConfigFromJson(JSON.parse(config)), tensors: parseSafetensors(weights).tensors };
}

const netInput = fixtureInputs('expected.safetensors', ['x']);
const tokenIds = fixtureInputs('tokens-expected.safetensors', ['ids']);
const COMBINE_ALL = ['embed', 'lin', 'conv', 'pw', 'conv1d'];

const cases: Case[] = [
  {
    name: 'net-dora-rslora-pattern',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      [
        'default',
        {
          r: 4,
          loraAlpha: 16,
          useRslora: true,
          useDora: true,
          targetModules: ['q_proj', 'mlp', 'head'],
          initLoraWeights: false,
          rankPattern: { head: 2 },
        },
      ],
    ],
  },
  {
    name: 'net-two-adapters',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      ['default', { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'v_proj'] }],
      ['other', { r: 2, loraAlpha: 3, targetModules: 'layers\\.1\\..*', alphaPattern: { 'layers.1.out': 5 } }],
    ],
  },
  {
    name: 'net-bias-all-modules-to-save',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      [
        'default',
        {
          r: 3,
          loraAlpha: 6,
          targetModules: ['mlp', 'out'],
          bias: 'all',
          modulesToSave: ['head'],
          layersToTransform: [0],
          layersPattern: 'layers',
        },
      ],
    ],
  },
  {
    name: 'net-all-linear-lora-bias',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [['default', { r: 4, loraAlpha: 4, targetModules: 'all-linear', loraBias: true, loraDropout: 0.1 }]],
  },
  {
    name: 'net-combined-svd',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      ['default', { r: 4, loraAlpha: 8, targetModules: ['q_proj', 'mlp'] }],
      ['b', { r: 2, loraAlpha: 2, targetModules: ['q_proj', 'out'] }],
    ],
    after: async (peft) => {
      await addWeightedAdapter(peft, ['default', 'b'], [0.7, 0.4], 'mix', { combinationType: 'svd', svdRank: 3 });
      return ['mix'];
    },
  },
  {
    name: 'net-pissa-converted',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      [
        'default',
        {
          r: 2,
          loraAlpha: 4,
          targetModules: ['q_proj', 'v_proj', 'mlp'],
          initLoraWeights: 'pissa',
          rankPattern: { mlp: 3 },
        },
      ],
    ],
    convert: true,
    tolerance: 1e-5,
  },
  {
    name: 'net-olora-converted',
    model: 'Net',
    build: baseNet,
    inputs: netInput,
    adapters: [
      [
        'default',
        {
          r: 2,
          loraAlpha: 2,
          targetModules: ['q_proj', 'out', 'head'],
          initLoraWeights: 'olora',
          alphaPattern: { head: 5 },
        },
      ],
    ],
    convert: true,
    tolerance: 1e-5,
  },
  {
    name: 'emb-lora',
    model: 'EmbNet',
    build: embNet,
    inputs: fixtureInputs('emb-expected.safetensors', ['ids']),
    adapters: [
      ['default', { r: 3, loraAlpha: 6, useRslora: true, targetModules: ['embed', 'lin'], alphaPattern: { embed: 9 } }],
    ],
  },
  {
    name: 'conv-lora-bias',
    model: 'ConvNet',
    build: convNet,
    inputs: fixtureInputs('conv-expected.safetensors', ['x']),
    adapters: [
      [
        'default',
        { r: 3, loraAlpha: 6, targetModules: ['conv', 'conv1d'], loraBias: true, rankPattern: { conv1d: 2 } },
      ],
    ],
  },
  {
    name: 'convdora-grouped',
    model: 'ConvDoraNet',
    build: convDoraNet,
    inputs: fixtureInputs('convdora-expected.safetensors', ['ids']),
    adapters: [
      [
        'default',
        {
          r: 4,
          loraAlpha: 8,
          useDora: true,
          targetModules: ['embed', 'conv', 'conv1d'],
          rankPattern: { conv1d: 2 },
          alphaPattern: { embed: 4 },
        },
      ],
      ['grouped', { r: 4, loraAlpha: 4, targetModules: ['gconv'] }],
      ['grouped_dora', { r: 2, loraAlpha: 4, useDora: true, targetModules: ['gconv'] }],
    ],
  },
  {
    name: 'gpt-fan-in-fan-out-dora-rslora-pattern',
    model: 'GptNet',
    build: gptNet,
    inputs: fixtureInputs('fifo-expected.safetensors', ['x']),
    adapters: [
      [
        'default',
        {
          r: 4,
          loraAlpha: 16,
          useRslora: true,
          useDora: true,
          fanInFanOut: true,
          targetModules: ['c_attn', 'c_proj', 'head'],
          rankPattern: { 'mlp.c_proj': 2 },
        },
      ],
    ],
  },
  {
    name: 'tokens-list-tied',
    model: 'TokNet',
    modelArgs: { tied: true },
    build: () => tokNet(true),
    inputs: tokenIds,
    adapters: [['default', { r: 2, loraAlpha: 4, targetModules: ['lin'], trainableTokenIndices: [1, 3, 5] }]],
    saveEmbeddingLayers: true,
  },
  {
    name: 'tokens-dict',
    model: 'TokNet',
    build: () => tokNet(false),
    inputs: tokenIds,
    adapters: [
      [
        'default',
        {
          r: 2,
          loraAlpha: 4,
          targetModules: ['lin'],
          trainableTokenIndices: { embed_tokens: [0, 2], lm_head: [4, 9] },
        },
      ],
    ],
  },
  {
    // a tied lm_head given rows of its own trains them apart from the embedding's
    name: 'tokens-dict-tied',
    model: 'TokNet',
    modelArgs: { tied: true },
    build: () => tokNet(true),
    inputs: tokenIds,
    adapters: [
      [
        'default',
        { r: 2, loraAlpha: 4, targetModules: ['lin'], trainableTokenIndices: { embed_tokens: [2, 4], lm_head: [6] } },
      ],
    ],
  },
  {
    // the embedding table is changed outside the adapter (as a resized vocabulary would be): PEFT has to
    // take it from the adapter file to give our output
    name: 'tokens-modules-to-save-embedding-layers',
    model: 'TokNet',
    build: () => tokNet(false),
    inputs: tokenIds,
    adapters: [['default', { r: 2, loraAlpha: 4, targetModules: ['embed_tokens', 'lin'], modulesToSave: ['lm_head'] }]],
    saveEmbeddingLayers: true,
    after: async (peft) => {
      const table = (peft.model.getSubmodule('embed_tokens') as LoraEmbedding).baseLayer.weight;
      tf.tidy(() => table.assign(tf.add(table, tf.randomNormal(table.shape, 0, 0.3, 'float32', 5))));
      return [];
    },
  },
  {
    name: 'combine-conv-embedding',
    model: 'CombineNet',
    build: combineNet,
    inputs: fixtureInputs('combine-base.safetensors', ['ids', 'img']),
    adapters: [
      ['a', { r: 4, loraAlpha: 8, targetModules: COMBINE_ALL, rankPattern: { conv1d: 2 } }],
      [
        'b',
        {
          r: 4,
          loraAlpha: 6,
          useRslora: true,
          targetModules: COMBINE_ALL,
          rankPattern: { conv1d: 2 },
          alphaPattern: { conv: 3 },
        },
      ],
    ],
    after: async (peft) => {
      // combineAdapters works on files, without the model; its result loads beside the others
      const files = [await adapterFiles(peft, 'a'), await adapterFiles(peft, 'b')];
      const mix = await combineAdapters(files, [0.7, -0.4], { combinationType: 'ties_svd', density: 0.5, svdRank: 3 });
      const weights = await serializeSafetensors(mix.tensors, { metadata: { format: 'pt' } });
      await loadAdapter(
        peft,
        { 'adapter_config.json': loraConfigToJson(mix.config), 'adapter_model.safetensors': weights },
        { adapterName: 'combined_ties_svd' },
      );
      tf.dispose([...files.flatMap((f) => Object.values(f.tensors)), ...Object.values(mix.tensors)]);
      await addWeightedAdapter(peft, ['a', 'b'], [0.7, -0.4], 'weighted_cat', { combinationType: 'cat' });
      await addWeightedAdapter(peft, ['a', 'b'], [1.2, 0.5], 'weighted_magnitude_prune', {
        combinationType: 'magnitude_prune',
        density: 0.6,
      });
      return ['combined_ties_svd', 'weighted_cat', 'weighted_magnitude_prune'];
    },
  },
];

describe('adapters made here, saved for PEFT (tools/oracle/check_roundtrip.py)', () => {
  // PEFT's warnings (fan_in_fan_out corrected, grouped convolutions, embedding layers saved) are expected here
  let warn: ReturnType<typeof vi.spyOn>;
  beforeAll(async () => {
    await initBackend('cpu');
    warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    peftOutputs = readFixture('roundtrip-peft.safetensors');
  });
  afterAll(() => {
    warn.mockRestore();
    tf.dispose(Object.values(peftOutputs));
    if (process.env.LORA_ROUNDTRIP_DIR) writeFileSync(join(root, 'index.json'), JSON.stringify(index, null, 2));
  });

  for (const c of cases) {
    it(`${c.name}: saved, read back by our loader with the same output`, async () => {
      const before = tf.memory().numTensors;
      const dir = join(root, c.name);
      const initialDir = join(root, `${c.name}.initial`);
      // this case's folders are the test's own (LORA_ROUNDTRIP_DIR may hold an earlier run's)
      for (const d of [dir, initialDir]) rmSync(d, { recursive: true, force: true });
      const model = c.build();
      // written beside the adapter once it is saved (saveAdapter publishes a directory of adapter files only)
      const baseWeights = await serializeSafetensors(model.stateDict());
      manualSeed(7);
      const [[firstName, first], ...rest] = c.adapters as [
        [string, Partial<LoraConfig>],
        ...[string, Partial<LoraConfig>][],
      ];
      const peft = getPeftModel(model, first, { adapterName: firstName });
      for (const [name, config] of rest) peft.addAdapter(name, loraConfig(config));
      if (c.convert) await saveAdapter(peft, initialDir);
      perturb(peft, 11);
      const names = [...c.adapters.map(([n]) => n), ...((await c.after?.(peft)) ?? [])];
      peft.eval();
      const inputs = c.inputs();
      const args = Object.values(inputs);
      const io: Record<string, tf.Tensor> = { ...inputs };
      for (const n of names) {
        peft.setAdapter(n);
        io[`y.${n}`] = peft.call(...args) as tf.Tensor;
        // what PEFT 0.21 gave for this adapter, loaded from the files this test saves
        const theirs = peftOutputs[`${c.name}.y.${n}`];
        expect(
          theirs,
          `no PEFT output recorded for ${c.name}/${n}; re-run tools/oracle/check_roundtrip.py --write-expected`,
        ).toBeDefined();
        expect(
          maxRelativeError(await (io[`y.${n}`] as tf.Tensor).data(), await (theirs as tf.Tensor).data()),
          `${c.name}/${n} against PEFT`,
        ).toBeLessThan(1e-5);
      }
      await saveAdapter(peft, dir, {
        saveEmbeddingLayers: c.saveEmbeddingLayers,
        pathInitialModelForWeightConversion: c.convert ? initialDir : undefined,
      });
      writeFileSync(join(dir, 'base.safetensors'), baseWeights);
      writeFileSync(join(dir, 'io.safetensors'), await serializeSafetensors(io));
      index.push({
        name: c.name,
        model: c.model,
        model_args: c.modelArgs ?? {},
        inputs: Object.keys(inputs),
        adapters: names,
        save_embedding_layers: c.saveEmbeddingLayers ?? 'auto',
      });

      // our own loader gives the same outputs from the saved files, adapter by adapter, on the base model as it was
      for (const n of names) {
        const {
          model: back,
          missingKeys,
          unexpectedKeys,
        } = await loadAdapter(c.build(), n === 'default' ? dir : join(dir, n), { strict: true });
        expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
        const y = back.call(...args) as tf.Tensor;
        const error = maxRelativeError(await y.data(), await (io[`y.${n}`] as tf.Tensor).data());
        if (c.tolerance === undefined) expect(error, n).toBe(0);
        else expect(error, n).toBeLessThan(c.tolerance);
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
