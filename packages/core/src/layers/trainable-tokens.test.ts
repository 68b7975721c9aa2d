import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors, readSafetensorsHeader } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { Embedding, Linear, Module, SGD, train, withoutInit } from '@lora/nn';
import {
  type PeftModel,
  TrainableTokensWrapper,
  adapterStateDict,
  getPeftModel,
  loadAdapter,
  loraConfig,
  mergeAdapterWeights,
  serializeAdapter,
} from '@lora/core';
import { FIX, readAdapterFiles, readFixture } from '../fixture-nets.test-util';
import { type TokNet, tokNet } from '../token-nets.test-util';

const notes = JSON.parse(readFileSync(join(FIX, 'tokens-notes.json'), 'utf8'));
// read per test, on the backend of the suite running it
let want: Record<string, tf.Tensor> = {};
const w = (k: string) => {
  const t = want[k];
  if (!t) throw new Error(`no expected '${k}'`);
  return t;
};
const close = async (got: tf.Tensor, key: string, tol = 1e-5) =>
  expect(maxRelativeError(await got.data(), await w(key).data()), key).toBeLessThan(tol);
beforeEach(() => {
  want = readFixture('tokens-expected.safetensors');
});
/** Suites below the backend loop run on cpu, whichever suite ran before them. */
const onCpu = () =>
  beforeAll(async () => {
    await initBackend('cpu');
  });
afterEach(() => tf.dispose(Object.values(want)));

const cases = { 'tokens-list': false, 'tokens-dict': false, 'tokens-tied': true, 'tokens-tied-dict': true } as const;

await describeEachBackend('PEFT-saved trainable-token adapters', () => {
  for (const [name, tied] of Object.entries(cases)) {
    it(`${name}: loads under PEFT's keys and gives PEFT's outputs, disabled, merged, unmerged and merged-and-unloaded`, async () => {
      const before = tf.memory().numTensors;
      const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(tokNet(tied), join(FIX, `peft-${name}`));
      expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
      const fileKeys = readSafetensorsHeader(
        new Uint8Array(readFileSync(join(FIX, `peft-${name}`, 'adapter_model.safetensors'))),
      )
        .entries.map((e) => e.name)
        .sort();
      expect(Object.keys(adapterStateDict(peft)).sort()).toEqual(fileKeys);
      const ids = w('ids');
      const run = async (key: string) => {
        const y = peft.call(ids) as tf.Tensor;
        await close(y, `${name}.${key}`);
        y.dispose();
      };
      await run('out');
      peft.disableAdapters();
      await run('disabled_out');
      peft.enableAdapters();
      peft.mergeAdapter();
      await run('merged_out');
      peft.unmergeAdapter();
      await run('unmerged_out');
      const merged = peft.mergeAndUnload() as TokNet;
      expect(merged.embed_tokens).toBeInstanceOf(Embedding);
      expect(merged.lm_head).toBeInstanceOf(Linear);
      await close(merged.embed_tokens.weight, `${name}.merged.embed_tokens.weight`);
      await close(merged.lm_head.weight, `${name}.merged.lm_head.weight`);
      if (tied) expect(merged.lm_head.weight).toBe(merged.embed_tokens.weight);
      merged.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('tied: the lm_head follows the embedding rows and saves nothing of its own; trainable parameters as PEFT', () => {
    const peft = getPeftModel(tokNet(true), { r: 2, targetModules: ['lin'], trainableTokenIndices: [1, 3, 5] });
    const head = peft.model.getSubmodule('lm_head') as TrainableTokensWrapper;
    const embed = peft.model.getSubmodule('embed_tokens') as TrainableTokensWrapper;
    expect(head).toBeInstanceOf(TrainableTokensWrapper);
    expect(head.tokenAdapter.tiedAdapter).toBe(embed.tokenAdapter);
    expect(
      [...peft.namedParameters()]
        .filter(([, p]) => p.trainable)
        .map(([n]) => n)
        .sort(),
    ).toEqual(notes.tied_trainable);
    expect(Object.keys(adapterStateDict(peft)).filter((k) => k.includes('token_adapter'))).toEqual([
      'base_model.model.embed_tokens.token_adapter.trainable_tokens_delta',
    ]);
    peft.dispose();
  });

  it('a round trip through our own files gives the same rows', async () => {
    const { model: peft } = await loadAdapter(tokNet(), join(FIX, 'peft-tokens-dict'));
    const { config, weights } = await serializeAdapter(peft);
    const theirs = readAdapterFiles('peft-tokens-dict');
    expect(JSON.parse(config).trainable_token_indices).toEqual({ embed_tokens: [0, 2], lm_head: [4, 7, 9] });
    const ours = parseSafetensors(weights).tensors;
    for (const [k, t] of Object.entries(theirs.tensors))
      expect(maxRelativeError(await ours[k]!.data(), await t.data()), k).toBe(0);
    tf.dispose([...Object.values(ours), ...Object.values(theirs.tensors)]);
    peft.dispose();
  });
});

describe('several trainable-token adapters', () => {
  onCpu();

  const loadBoth = async () => {
    const { model: peft } = await loadAdapter(tokNet(), join(FIX, 'peft-tokens-multi'));
    await loadAdapter(peft, join(FIX, 'peft-tokens-multi', 'other'), { adapterName: 'other' });
    return peft;
  };

  it('each adapter alone, a mixed batch, and both merged, as PEFT; the originals come back on unmerge', async () => {
    const before = tf.memory().numTensors;
    const peft = await loadBoth();
    const ids = w('ids');
    const check = async (y: tf.Tensor, key: string) => {
      await close(y, key);
      y.dispose();
    };
    await check(peft.call(ids) as tf.Tensor, 'multi.default.out');
    peft.setAdapter('other');
    await check(peft.call(ids) as tf.Tensor, 'multi.other.out');
    await check(peft.forwardMixed(['default', 'other', '__base__'], ids) as tf.Tensor, 'multi.mixed_out');
    peft.mergeAdapter({ adapterNames: ['default', 'other'] });
    const embed = (peft.model.getSubmodule('embed_tokens') as TrainableTokensWrapper).tokenAdapter.baseLayer.weight;
    await close(embed, 'multi.merged_both.embed_tokens.weight');
    expect(() => peft.deleteAdapter('other')).toThrow(
      "Cannot delete adapter(s) ['other'] while they are merged. Please unmerge them first.",
    );
    peft.unmergeAdapter();
    await close(embed, 'multi.unmerged.embed_tokens.weight');
    peft.deleteAdapter('other');
    expect((peft.model.getSubmodule('embed_tokens') as TrainableTokensWrapper).tokenAdapter.adapters).toEqual([
      'default',
    ]);
    peft.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it("overlapping rows refuse to merge, with PEFT's message", async () => {
    const peft = await loadBoth();
    peft.addAdapter('overlap', loraConfig({ r: 2, targetModules: ['lin'], trainableTokenIndices: [3, 4] }));
    expect(() => peft.mergeAdapter({ adapterNames: ['default', 'overlap'] })).toThrow(notes.multi.overlap_error);
    peft.dispose();
  });
});

describe('training trainable tokens', () => {
  onCpu();
  it('only the listed rows change: the deltas train, the base table and the other rows stay as they were', async () => {
    const peft = getPeftModel(tokNet(true), {
      r: 2,
      targetModules: ['lin'],
      trainableTokenIndices: [1, 3, 5],
    }) as PeftModel;
    peft.train();
    const layer = (peft.model.getSubmodule('embed_tokens') as TrainableTokensWrapper).tokenAdapter;
    const baseBefore = await layer.baseLayer.weight.array();
    const deltaBefore = await layer.trainableTokensDelta.get('default').array();
    const effectiveBefore = layer.getMergedWeights();
    const ids = w('ids');
    const before = tf.memory().numTensors;
    await train(peft, [ids, ids], {
      optimizer: new SGD(peft.trainableParameters(), { lr: 0.5 }),
      loss: (b) => tf.mean(tf.square(peft.call(b) as tf.Tensor)) as tf.Scalar,
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(await layer.baseLayer.weight.array()).toEqual(baseBefore);
    const deltaAfter = (await layer.trainableTokensDelta.get('default').array()) as number[][];
    for (let j = 0; j < 3; j++) expect(deltaAfter[j]).not.toEqual((deltaBefore as number[][])[j]);
    const effectiveAfter = layer.getMergedWeights();
    const diff = tf.tidy(() => tf.any(tf.notEqual(effectiveAfter, effectiveBefore), 1));
    const changed = ((await diff.array()) as number[]).flatMap((c, i) => (c ? [i] : []));
    expect(changed).toEqual([1, 3, 5]);
    tf.dispose([effectiveBefore, effectiveAfter, diff]);
    peft.dispose();
  });
});

describe('choosing the layers', () => {
  onCpu();
  it("errors as PEFT's: a LoRA target, a modules_to_save module, a missing module, tied layers with other rows under ensure_weight_tying", () => {
    const make = (fields: Parameters<typeof loraConfig>[0]) => () =>
      getPeftModel(tokNet(true), loraConfig({ r: 2, ...fields }));
    expect(make({ targetModules: ['embed_tokens', 'lin'], trainableTokenIndices: [1] })).toThrow(
      /^trainable_token_indices cannot be applied to modules of type LoraEmbedding/,
    );
    expect(
      make({ targetModules: ['lin'], modulesToSave: ['embed_tokens'], trainableTokenIndices: { embed_tokens: [1] } }),
    ).toThrow(notes.modules_to_save_and_tokens.replace(/^ValueError: /, ''));
    expect(make({ targetModules: ['lin'], trainableTokenIndices: { wte: [1] } })).toThrow(
      notes.not_found.replace(/^ValueError: /, ''),
    );
    expect(
      make({
        targetModules: ['lin'],
        trainableTokenIndices: { embed_tokens: [1], lm_head: [2] },
        extra: { ensure_weight_tying: true },
      }),
    ).toThrow(notes.ensure_tying_mismatch.replace(/^ValueError: /, ''));
    expect(make({ targetModules: ['lin'], trainableTokenIndices: [1, 20] })).toThrow(
      'trainable_token_indices: token index 20 is out of range for a layer of 20 rows; use indices in [0, 20)',
    );
  });

  it("a later adapter's targets never reach inside a token wrapper (all-linear leaves the wrapped lm_head alone)", () => {
    const peft = getPeftModel(tokNet(true), { r: 2, targetModules: ['lin'], trainableTokenIndices: [1, 3] });
    peft.addAdapter('second', loraConfig({ r: 2, targetModules: 'all-linear' }));
    const wrapped = [...peft.loraLayers()].map(([p]) => p);
    expect(wrapped).toEqual(['lin']);
    expect((peft.model.getSubmodule('lm_head') as TrainableTokensWrapper).tokenAdapter.baseLayer).toBeInstanceOf(
      Linear,
    );
    peft.dispose();
  });

  it('a tied lm_head given other rows trains them on its own (not tied), as PEFT without ensure_weight_tying', () => {
    const peft = getPeftModel(tokNet(true), {
      r: 2,
      targetModules: ['lin'],
      trainableTokenIndices: { embed_tokens: [2, 4], lm_head: [6] },
    });
    const head = peft.model.getSubmodule('lm_head') as TrainableTokensWrapper;
    expect(head.tokenAdapter.tiedAdapter).toBeNull();
    expect(head.tokenAdapter.tokenIndices.get('default')).toEqual([6]);
    peft.dispose();
  });

  it("a list trains the module the model's getInputEmbeddings() returns, else embed_tokens; a clear error names the fix", () => {
    class Gpt extends Module {
      wte = this.registerModule('wte', new Embedding(10, 4));
      proj = this.registerModule('proj', new Linear(4, 4));
      forward(ids: tf.Tensor) {
        return this.proj.call(this.wte.call(ids));
      }
    }
    class GptWithMethod extends Gpt {
      getInputEmbeddings() {
        return this.wte;
      }
    }
    const peft = getPeftModel(
      withoutInit(() => new GptWithMethod()),
      { r: 2, targetModules: ['proj'], trainableTokenIndices: [1] },
    );
    expect(peft.model.getSubmodule('wte')).toBeInstanceOf(TrainableTokensWrapper);
    peft.dispose();
    const net = withoutInit(() => new Gpt());
    expect(() => getPeftModel(net, { r: 2, targetModules: ['proj'], trainableTokenIndices: [1] })).toThrow(
      /Target modules \{'embed_tokens'\} not found in the base model\. .*getInputEmbeddings\(\)/,
    );
    net.dispose();
  });
});

describe('merging by name', () => {
  onCpu();
  it('mergeAdapterWeights writes the rows into weight files by name, as PEFT merges them', async () => {
    const base = readFixture('tokens-base.safetensors');
    const before = tf.memory().numTensors;
    for (const name of ['tokens-list', 'tokens-dict']) {
      const adapter = readAdapterFiles(`peft-${name}`);
      const { merged, missing } = mergeAdapterWeights(base, adapter);
      expect(missing).toEqual([]);
      for (const k of ['embed_tokens.weight', 'lm_head.weight'])
        await close(merged[k] ?? (base[k] as tf.Tensor), `${name}.merged.${k}`);
      tf.dispose([...Object.values(merged), ...Object.values(adapter.tensors)]);
    }
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(base));
  });
});
