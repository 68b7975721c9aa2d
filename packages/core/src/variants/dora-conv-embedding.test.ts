import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend, readSafetensorsHeader } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { AdamW, Conv1d, Module, manualSeed, train } from '@lora/nn';
import {
  type LoraConv,
  type LoraEmbedding,
  type PeftModel,
  adapterStateDict,
  adapterTargets,
  getPeftModel,
  loadAdapter,
  mergeAdapterWeights,
  saveAdapter,
} from '@lora/core';
import { type ConvDoraNet, FIX, convDoraNet, readAdapterFiles, readFixture } from '../fixture-nets.test-util';

/** Stands in for lora_dropout in training mode with a known mask (as the oracle's FixedMask). */
class FixedMask extends Module {
  constructor(readonly mask: tf.Tensor) {
    super();
  }
  forward(x: tf.Tensor): tf.Tensor {
    return tf.mul(x, this.mask);
  }
}

const GROUPED_MERGE = 'Merging is not supported for _ConvNd layers with groups > 1!';
const close = async (got: tf.Tensor, want: tf.Tensor | undefined, label: string, tol = 1e-5) => {
  if (!want) throw new Error(`no expected tensor for ${label}`);
  expect(got.shape, label).toEqual(want.shape);
  expect(maxRelativeError(await got.data(), await want.data()), label).toBeLessThan(tol);
};

// PEFT warns on every grouped conv it wraps; so do we (checked below), quietly here
let warn: ReturnType<typeof vi.spyOn>;
beforeAll(() => {
  warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
});
afterEach(() => warn.mockClear());

await describeEachBackend('DoRA on Embedding, Conv2d and Conv1d', () => {
  it("a PEFT-saved adapter loads and gives PEFT's outputs (eval, and training through fixed dropout masks), merged weights and an exact unmerge", async () => {
    const want = readFixture('convdora-expected.safetensors');
    const before = tf.memory().numTensors;
    const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(convDoraNet(), join(FIX, 'convdora-dora'));
    expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
    peft.eval();
    const y = peft.call(want.ids) as tf.Tensor;
    await close(y, want['dora.out'], 'eval output');

    // training mode with dropout: the base output is recomputed on the dropped input (PEFT's DoRA)
    const dropouts = ['conv', 'conv1d'].map((p) => {
      const layer = peft.model.getSubmodule(p) as LoraConv;
      const dropout = layer.loraDropout.get('default');
      layer.loraDropout.set('default', new FixedMask(want[`dora.mask.${p}`] as tf.Tensor));
      return [layer, dropout] as const;
    });
    peft.train();
    const yTrain = peft.call(want.ids) as tf.Tensor;
    await close(yTrain, want['dora.train_out'], 'training output');
    peft.eval();
    for (const [layer, dropout] of dropouts) layer.loraDropout.set('default', dropout);

    const original = Object.fromEntries(
      ['embed', 'conv', 'conv1d'].map((p) => [
        p,
        tf.clone((peft.model.getSubmodule(p) as LoraConv | LoraEmbedding).baseLayer.weight),
      ]),
    );
    peft.mergeAdapter();
    for (const p of ['embed', 'conv', 'conv1d'])
      await close(
        (peft.model.getSubmodule(p) as LoraConv).baseLayer.weight,
        want[`dora.merged.${p}.weight`],
        `merged ${p}`,
      );
    const yMerged = peft.call(want.ids) as tf.Tensor;
    await close(yMerged, want['dora.out'], 'merged output');
    peft.unmergeAdapter();
    for (const p of ['embed', 'conv', 'conv1d'])
      await close((peft.model.getSubmodule(p) as LoraConv).baseLayer.weight, original[p], `unmerged ${p}`, 1e-6);
    const yAgain = peft.call(want.ids) as tf.Tensor;
    await close(yAgain, want['dora.out'], 'output after unmerge');

    const merged = peft.mergeAndUnload() as ConvDoraNet;
    for (const p of ['embed', 'conv', 'conv1d'] as const)
      await close(merged[p].weight, want[`dora.merged.${p}.weight`], `merge_and_unload ${p}`);
    merged.dispose();
    tf.dispose([y, yTrain, yMerged, yAgain, ...Object.values(original)]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(want));
  });

  it('two DoRA adapters merged together take each norm on the unmerged base weight, as PEFT 0.21', async () => {
    const want = readFixture('convdora-expected.safetensors');
    const before = tf.memory().numTensors;
    const { model: peft } = await loadAdapter(convDoraNet(), join(FIX, 'convdora-dora'));
    await loadAdapter(peft, join(FIX, 'convdora-dora-second'), { adapterName: 'second' });
    const original = Object.fromEntries(
      ['embed', 'conv'].map((p) => [p, tf.clone((peft.model.getSubmodule(p) as LoraConv).baseLayer.weight)]),
    );
    peft.mergeAdapter({ adapterNames: ['default', 'second'] });
    for (const p of ['embed', 'conv'])
      await close(
        (peft.model.getSubmodule(p) as LoraConv).baseLayer.weight,
        want[`both.merged.${p}.weight`],
        `both merged ${p}`,
      );
    peft.unmergeAdapter();
    for (const p of ['embed', 'conv'])
      await close((peft.model.getSubmodule(p) as LoraConv).baseLayer.weight, original[p], `both unmerged ${p}`, 1e-6);
    peft.dispose();
    tf.dispose(Object.values(original));
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(want));
  });

  it("grouped convolutions: plain LoRA (grouped lora_B) and DoRA give PEFT's outputs; merging raises PEFT's error", async () => {
    const want = readFixture('convdora-expected.safetensors');
    const before = tf.memory().numTensors;
    for (const [dir, key] of [
      ['convdora-grouped', 'grouped.out'],
      ['convdora-grouped-dora', 'grouped_dora.out'],
    ] as const) {
      const { model: peft, missingKeys, unexpectedKeys } = await loadAdapter(convDoraNet(), join(FIX, dir));
      expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
      peft.eval();
      const layer = peft.model.getSubmodule('gconv') as LoraConv;
      expect(layer.loraB.get('default').options.groups).toBe(2);
      const y = peft.call(want.ids) as tf.Tensor;
      await close(y, want[key], dir);
      y.dispose();
      const w = Array.from(await layer.baseLayer.weight.data());
      expect(() => peft.mergeAdapter()).toThrow(GROUPED_MERGE);
      expect(() => layer.getDeltaWeight('default')).toThrow(GROUPED_MERGE);
      expect(Array.from(await layer.baseLayer.weight.data())).toEqual(w);
      expect(layer.mergedAdapters).toEqual([]);
      peft.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(Object.values(want));
  });
});

describe('DoRA and grouped convolutions without a backend sweep', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  it("merges PEFT's DoRA conv and embedding adapters into weight files by name as PEFT does; grouped convs refuse; kinds are reported", async () => {
    const baseFile = readFixture('convdora-base.safetensors');
    const want = readFixture('convdora-expected.safetensors');
    const adapter = readAdapterFiles('convdora-dora');
    const grouped = readAdapterFiles('convdora-grouped');
    expect(Object.fromEntries(adapterTargets(adapter.tensors))).toEqual({
      conv: 'conv2d',
      conv1d: 'conv1d',
      embed: 'embedding',
    });
    const before = tf.memory().numTensors;
    const { merged, missing } = mergeAdapterWeights(baseFile, adapter);
    expect(missing).toEqual([]);
    for (const p of ['embed', 'conv', 'conv1d'])
      await close(merged[`${p}.weight`] as tf.Tensor, want[`dora.merged.${p}.weight`], `by name ${p}`);
    tf.dispose(Object.values(merged));
    expect(() => mergeAdapterWeights(baseFile, grouped)).toThrow(
      `'gconv' is a grouped convolution (groups=2): ${GROUPED_MERGE}`,
    );
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([
      ...Object.values(baseFile),
      ...Object.values(want),
      ...Object.values(adapter.tensors),
      ...Object.values(grouped.tensors),
    ]);
  });

  it("gradients equal PEFT's (the weight norm detached), and training moves the magnitudes, not the base (cpu: wasm has no conv filter gradient)", async () => {
    const want = readFixture('convdora-expected.safetensors');
    const { model: peft } = await loadAdapter(convDoraNet(), join(FIX, 'convdora-dora'), { isTrainable: true });
    peft.eval();
    const params = [...peft.namedParameters()].filter(([, p]) => p.trainable);
    expect(params.map(([n]) => n).filter((n) => n.includes('lora_magnitude_vector'))).toHaveLength(3);
    const before = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.mul(peft.call(want.ids) as tf.Tensor, want['dora.grad_weight'] as tf.Tensor)) as tf.Scalar,
      params.map(([, p]) => p),
    );
    for (const [n, p] of params) await close(grads[p.name] as tf.Tensor, want[`dora.grad.${n}`], `gradient of ${n}`);
    tf.dispose([value, ...Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(before);

    const magnitudes = await Promise.all(
      params.filter(([n]) => n.includes('magnitude')).map(async ([, p]) => Array.from(await p.data())),
    );
    const frozen = await Promise.all(
      [...peft.namedParameters()]
        .filter(([, p]) => !p.trainable)
        .map(async ([n, p]) => [n, Array.from(await p.data())] as const),
    );
    expect(frozen.length).toBeGreaterThan(0);
    const opt = new AdamW(peft.trainableParameters(), { lr: 1e-2 });
    const y = tf.zerosLike(want['dora.out'] as tf.Tensor);
    await train(
      peft,
      [
        { x: want.ids, y },
        { x: want.ids, y },
      ],
      {
        optimizer: opt,
        loss: (b) => tf.mean(tf.square(tf.sub(peft.call(b.x) as tf.Tensor, b.y as tf.Tensor))) as tf.Scalar,
        progressBar: false,
      },
    );
    const after = await Promise.all(
      params.filter(([n]) => n.includes('magnitude')).map(async ([, p]) => Array.from(await p.data())),
    );
    for (const [i, m] of after.entries()) expect(m).not.toEqual(magnitudes[i]);
    const now = new Map(peft.namedParameters());
    for (const [n, v] of frozen) expect(Array.from(await (now.get(n) as tf.Tensor).data()), n).toEqual(v);
    opt.dispose();
    y.dispose();
    peft.dispose();
    tf.dispose(Object.values(want));
  });

  it("saves DoRA conv and embedding adapters under PEFT's keys and shapes, and reads them back", async () => {
    const want = readFixture('convdora-expected.safetensors');
    const peftDir = join(FIX, 'convdora-dora');
    const { model: peft } = await loadAdapter(convDoraNet(), peftDir);
    peft.eval();
    const out = mkdtempSync(join(tmpdir(), 'lora-convdora-'));
    await saveAdapter(peft, out);
    const shapes = (file: string) =>
      Object.fromEntries(
        readSafetensorsHeader(new Uint8Array(readFileSync(file))).entries.map((e) => [e.name, [e.dtype, e.shape]]),
      );
    const ours = shapes(join(out, 'adapter_model.safetensors'));
    expect(ours).toEqual(shapes(join(peftDir, 'adapter_model.safetensors')));
    expect(ours['base_model.model.conv.lora_magnitude_vector']).toEqual(['F32', [1, 8, 1, 1]]);
    expect(ours['base_model.model.embed.lora_magnitude_vector']).toEqual(['F32', [6]]);
    const { model: again } = await loadAdapter(convDoraNet(), out, { strict: true });
    again.eval();
    const y = again.call(want.ids) as tf.Tensor;
    await close(y, want['dora.out'], 'reloaded output');
    const a = adapterStateDict(peft);
    const b = adapterStateDict(again);
    for (const k of Object.keys(a))
      expect(maxRelativeError(await (b[k] as tf.Tensor).data(), await (a[k] as tf.Tensor).data()), k).toBe(0);
    tf.dispose([y, ...Object.values(want)]);
    peft.dispose();
    again.dispose();
  });

  for (const [label, seed, init] of [
    ['init', 98, true],
    ['init_false', 99, false],
    ['init_lora_ga', 100, 'lora_ga'],
    ['init_gaussian', 101, 'gaussian'],
  ] as const) {
    it(`init_lora_weights=${JSON.stringify(init)} with DoRA: factors and magnitudes as PEFT's after the same seed`, async () => {
      const want = readFixture('convdora-expected.safetensors');
      manualSeed(seed);
      // 'lora_ga' needs no @lora/loraga here: PEFT falls back to the default init on convolutions and embeddings
      const peft = getPeftModel(convDoraNet(), {
        r: 2,
        loraAlpha: 4,
        targetModules: ['embed', 'conv', 'conv1d', 'gconv'],
        useDora: true,
        initLoraWeights: init,
      });
      const lora = [...peft.namedParameters()].filter(([n]) => n.includes('lora_'));
      expect(lora).toHaveLength(12);
      for (const [n, p] of lora) await close(p, want[`${label}.${n}`], n, 1e-6);
      peft.dispose();
      tf.dispose(Object.values(want));
    });
  }

  it('grouped convolutions: PEFT warns, the rank must be divisible by groups (PEFT wording); lora_bias without a base bias warns', () => {
    const peft = getPeftModel(convDoraNet(), { r: 4, targetModules: ['gconv'] });
    expect(warn).toHaveBeenCalledWith('LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.');
    const message =
      'Targeting a Conv2d with groups=2 and rank 3. Currently, support is limited to conv layers where the rank is divisible by groups. Either choose a different rank or do not target this specific layer.';
    expect(() => getPeftModel(convDoraNet(), { r: 3, targetModules: ['gconv'] })).toThrow(message);
    // a second adapter of a rank the groups do not divide (PEFT: torch's "in_channels must be divisible by groups")
    const before = tf.memory().numTensors;
    expect(() => peft.addAdapter('odd', { ...peft.peftConfig.get('default')!, r: 3 })).toThrow(message);
    expect(tf.memory().numTensors).toBe(before);
    peft.dispose();
    // lora_bias on a convolution without a bias: PEFT's warning (merging would fail)
    class NoBias extends Module {
      c = this.registerModule('c', new Conv1d(4, 4, 3, { bias: false }));
      forward(x: tf.Tensor): tf.Tensor {
        return this.c.call(x) as tf.Tensor;
      }
    }
    getPeftModel(new NoBias(), { r: 2, targetModules: ['c'], loraBias: true }).dispose();
    expect(warn).toHaveBeenCalledWith(
      "`lora_bias=True` was passed but the targeted layer of type Conv1d has no bias. This means that merging LoRA weights won't be possible.",
    );
  });

  it('init values PEFT refuses on convolutions fail with its wording; embeddings take them as the default init; DoRA refuses mixed batches', async () => {
    for (const init of ['pissa', 'pissa_niter_2', 'olora', 'orthogonal', 'eva'] as const) {
      expect(() => getPeftModel(convDoraNet(), { r: 2, targetModules: ['conv'], initLoraWeights: init })).toThrow(
        `Unknown initialization init_lora_weights='${init}'`,
      );
    }
    for (const target of ['conv', 'embed']) {
      const loftq = { initLoraWeights: 'loftq', loftqConfig: {} } as const; // PEFT requires loftq_config with 'loftq'
      expect(() => getPeftModel(convDoraNet(), { r: 2, targetModules: [target], ...loftq })).toThrow(
        /init_lora_weights='loftq' is not supported on (Conv2d|Embedding) layers/,
      );
    }
    for (const init of ['pissa', 'olora', 'orthogonal', 'eva'] as const) {
      const peft = getPeftModel(convDoraNet(), { r: 2, targetModules: ['embed'], initLoraWeights: init });
      const layer = peft.model.getSubmodule('embed') as LoraEmbedding;
      expect(Array.from(await layer.factorA('default').data()).every((v) => v === 0)).toBe(true);
      peft.dispose();
    }
    const { model: peft } = await loadAdapter(convDoraNet(), join(FIX, 'convdora-dora'));
    const ids = tf.zeros([2, 6, 6], 'int32');
    expect(() => (peft as PeftModel).forwardMixed(['default', '__base__'], ids)).toThrow(
      'Cannot pass `adapter_names` when DoRA is enabled.',
    );
    ids.dispose();
    peft.dispose();
  });
});
