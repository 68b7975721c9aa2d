import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { type PeftModel, type TunerLayer, getDeltaWeight, getPeftModel, loadAdapter } from '@lora/core';
import { matrix64 } from '@lora/linalg';
import { Conv2d, Linear, Module, manualSeed } from '@lora/nn';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { IntruderReductionError } from './errors';
import {
  FIX,
  IntruderGpt,
  IntruderNet,
  type SettingRecord,
  baseOf,
  readFixture,
  records,
} from './intruder-nets.test-util';
import { reduceIntruderDimension } from './reduce-intruder-dimension';
import { referenceReduction } from './reference.test-util';
import { WeightSvdCache } from './weight-svd-cache';

beforeAll(async () => {
  await initBackend('cpu');
});

const quiet = { loggingSink: null } as const;

async function fixtureModel(net: 'net' | 'gpt' = 'net'): Promise<PeftModel> {
  const build = net === 'net' ? () => new IntruderNet() : () => new IntruderGpt();
  return (await loadAdapter(baseOf(build, net), join(FIX, net, 'adapter'))).model;
}

const layerAt = (peft: PeftModel, path: string) => [...peft.loraLayers()].find(([p]) => p === path)?.[1] as TunerLayer;

/** Gives every LoRA factor of an adapter random values of the given size (init false makes them small). */
function randomise(peft: PeftModel, adapter: string, scale: number, seed: number): void {
  let i = 0;
  for (const [, layer] of peft.loraLayers())
    for (const v of [layer.factorA(adapter), layer.factorB(adapter)])
      tf.tidy(() => v.assign(tf.mul(tf.randomNormal(v.shape, 0, 1, 'float32', seed + i++), scale)));
}

describe('reduceIntruderDimension: what it makes', () => {
  it('adds the new adapter with the old config, makes it active, and leaves the old one as it was', async () => {
    const peft = await fixtureModel();
    const oldB = await layerAt(peft, 'q_proj').factorB('default').data();
    const lines: string[] = [];
    const report = await reduceIntruderDimension(peft, { loggingSink: (l) => lines.push(l) });
    expect(report.adapterName).toBe('intruder_reduced');
    expect(peft.activeAdapters).toEqual(['intruder_reduced']);
    expect([...peft.peftConfig.keys()]).toEqual(['default', 'intruder_reduced']);
    expect(peft.peftConfig.get('intruder_reduced')).toEqual(peft.peftConfig.get('default'));
    expect(lines.some((l) => l.includes('q_proj'))).toBe(true);
    const q = layerAt(peft, 'q_proj');
    expect(await q.factorB('default').data()).toEqual(oldB);
    expect(maxRelativeError(await q.factorB('intruder_reduced').data(), oldB)).toBeGreaterThan(1e-3);
    // a layer without intruders gets the old factors, unchanged (PEFT copies them)
    const down = layerAt(peft, 'down_proj');
    expect(report.layers.find((l) => l.path === 'down_proj')?.intruders).toEqual([]);
    expect(await down.factorA('intruder_reduced').data()).toEqual(await down.factorA('default').data());
    // ‖A_new‖ = ‖B_new‖: √S on each side
    const na = tf.tidy(() => tf.norm(q.factorA('intruder_reduced')).dataSync()[0] as number);
    const nb = tf.tidy(() => tf.norm(q.factorB('intruder_reduced')).dataSync()[0] as number);
    expect(Math.abs(na - nb) / nb).toBeLessThan(1e-5);
    peft.setAdapter('default');
    expect(peft.activeAdapters).toEqual(['default']);
    peft.dispose();
  });

  it('writes an Embedding’s factors in their own layout, where PEFT writes them transposed and its forward fails', async () => {
    const record = records('net').default as SettingRecord;
    // PEFT: lora_embedding_B got [vocab, r], lora_embedding_A [r, dim]; its forward raised
    expect(record.forward).toMatch(/^IndexError/);
    const expected = readFixture('net/default.safetensors');
    expect(expected['embed.B_new']?.shape).toEqual([30, 4]);
    expect(expected['embed.A_new']?.shape).toEqual([4, 24]);
    const peft = await fixtureModel();
    await reduceIntruderDimension(peft, quiet);
    const embed = layerAt(peft, 'embed');
    expect(embed.factorA('intruder_reduced').shape).toEqual([4, 30]);
    expect(embed.factorB('intruder_reduced').shape).toEqual([24, 4]);
    // the forward runs and is the base model with W + ΔW merged, ΔW the update PEFT computed (s·B_new·A_new)
    const ids = expected.input as tf.Tensor;
    const out = peft.call(ids) as tf.Tensor;
    const merged = baseOf(() => new IntruderNet(), 'net');
    const s = record.scaling;
    for (const path of ['embed', 'q_proj', 'up_proj', 'down_proj']) {
      const w = (merged.getSubmodule(path) as unknown as { weight: tf.Variable }).weight;
      tf.tidy(() =>
        w.assign(
          tf.add(
            w,
            tf.mul(
              tf.matMul(expected[`${path}.B_new`] as tf.Tensor2D, expected[`${path}.A_new`] as tf.Tensor2D),
              s[path] as number,
            ),
          ),
        ),
      );
    }
    const want = merged.call(ids) as tf.Tensor;
    expect(maxRelativeError(await out.data(), await want.data())).toBeLessThan(1e-4);
    tf.dispose([out, want, ...Object.values(expected)]);
    merged.dispose();
    peft.dispose();
  });

  it('writes a square Conv1D layer’s factors the right way round, where PEFT’s silently give the transposed update', async () => {
    const expected = readFixture('gpt/default.safetensors');
    const s = (records('gpt').default as SettingRecord).scaling.c_sq as number;
    const peft = await fixtureModel('gpt');
    await reduceIntruderDimension(peft, quiet);
    const layer = layerAt(peft, 'c_sq');
    const ours = getDeltaWeight(layer, 'intruder_reduced'); // [in, out], as W is stored
    const intended = tf.tidy(() =>
      tf.mul(tf.matMul(expected['c_sq.B_new'] as tf.Tensor2D, expected['c_sq.A_new'] as tf.Tensor2D), s),
    );
    // PEFT's lora_B ← B_new, lora_A ← A_new, and get_delta_weight transposes for fan_in_fan_out
    const peftWrote = tf.tidy(() => tf.transpose(intended));
    expect(maxRelativeError(await ours.data(), await intended.data())).toBeLessThan(1e-4);
    expect(maxRelativeError(await peftWrote.data(), await intended.data())).toBeGreaterThan(0.1);
    tf.dispose([ours, intended, peftWrote, ...Object.values(expected)]);
    peft.dispose();
  });

  it('reduces a convolution on its kernel flattened to [out, in·k·k] (PEFT 0.21 fails on one)', async () => {
    class ConvNet extends Module {
      conv = this.registerModule('conv', new Conv2d(2, 40, 2));
      forward(x: tf.Tensor) {
        return this.conv.call(x);
      }
    }
    manualSeed(7);
    const peft = getPeftModel(new ConvNet(), { r: 3, loraAlpha: 6, targetModules: ['conv'], initLoraWeights: false });
    randomise(peft, 'default', 0.4, 1);
    const layer = layerAt(peft, 'conv');
    const w = layer.baseLayer.weight;
    const a = layer.factorA('default');
    const b = layer.factorB('default');
    const ref = referenceReduction(
      matrix64(40, 8, await w.data()),
      matrix64(40, 3, await b.data()),
      matrix64(3, 8, await a.data()),
      2,
      { topK: 10, thresholdEpsilon: 0.5, mitigationLambda: 0.75 },
    );
    const report = await reduceIntruderDimension(peft, quiet);
    expect(report.layers[0]?.intruders).toEqual(ref.intruders);
    expect(ref.intruders.length).toBeGreaterThan(0);
    const delta = getDeltaWeight(layer, 'intruder_reduced');
    expect(delta.shape).toEqual([40, 2, 2, 2]);
    expect(maxRelativeError(await delta.data(), Float32Array.from(ref.delta.data))).toBeLessThan(1e-5);
    delta.dispose();
    peft.dispose();
  });
});

describe('reduceIntruderDimension: what it keeps', () => {
  class Two extends Module {
    a = this.registerModule('a', new Linear(16, 16));
    b = this.registerModule('b', new Linear(16, 4));
    forward(x: tf.Tensor) {
      return tf.tidy(() => this.b.call(this.a.call(x)));
    }
  }

  it('does not run the adapter’s initialisation again: a PiSSA base weight stays as it is (PEFT changes it again)', async () => {
    manualSeed(3);
    const peft = getPeftModel(new Two(), { r: 4, targetModules: ['a'], initLoraWeights: 'pissa' });
    const w = layerAt(peft, 'a').baseLayer.weight;
    const before = await w.data();
    await reduceIntruderDimension(peft, { ...quiet, thresholdEpsilon: 999 });
    expect(await w.data()).toEqual(before);
    expect(peft.peftConfig.get('intruder_reduced')?.initLoraWeights).toBe('pissa');
    peft.dispose();
  });

  it('keeps lora_B’s bias, DoRA’s magnitudes and modules_to_save copies as trained (PEFT resets them)', async () => {
    manualSeed(4);
    const peft = getPeftModel(new Two(), {
      r: 4,
      targetModules: ['a'],
      useDora: true,
      modulesToSave: ['b'],
      initLoraWeights: false,
    });
    const layer = layerAt(peft, 'a');
    const magnitude = layer.savedTensors('default').lora_magnitude_vector as tf.Variable;
    tf.tidy(() => magnitude.assign(tf.randomUniform(magnitude.shape, 0.5, 2, 'float32', 9)));
    const [, wrapper] = [...peft.modulesToSaveWrappers()][0] as [string, { modulesToSave: { get(n: string): Module } }];
    const trained = wrapper.modulesToSave.get('default').getParameter('weight') as tf.Variable;
    tf.tidy(() => trained.assign(tf.add(trained, 1)));
    await reduceIntruderDimension(peft, { ...quiet, thresholdEpsilon: 999 });
    const newMagnitude = layer.savedTensors('intruder_reduced').lora_magnitude_vector as tf.Variable;
    expect(await newMagnitude.data()).toEqual(await magnitude.data());
    const copy = wrapper.modulesToSave.get('intruder_reduced').getParameter('weight') as tf.Variable;
    expect(await copy.data()).toEqual(await trained.data());
    peft.dispose();

    manualSeed(5);
    const biased = getPeftModel(new Two(), { r: 4, targetModules: ['a'], loraBias: true, initLoraWeights: false });
    const bias = layerAt(biased, 'a').loraBias('default') as tf.Variable;
    tf.tidy(() => bias.assign(tf.randomNormal(bias.shape, 0, 1, 'float32', 2)));
    await reduceIntruderDimension(biased, { ...quiet, thresholdEpsilon: 999 });
    expect(await (layerAt(biased, 'a').loraBias('intruder_reduced') as tf.Variable).data()).toEqual(await bias.data());
    biased.dispose();
  });
});

describe('reduceIntruderDimension: refusals leave the model as it was', () => {
  it('refuses a model that is not a PEFT LoRA model, with PEFT’s message', async () => {
    await expect(reduceIntruderDimension(new Linear(2, 2) as unknown as PeftModel)).rejects.toThrow(
      'The provided model is not using LoRA and is therefore not supported.',
    );
  });

  it('refuses bad names and options before any work', async () => {
    const peft = await fixtureModel();
    const count = tf.memory().numTensors;
    const cases: [object, RegExp][] = [
      [{ oldAdapterName: 'nope' }, /adapter 'nope' does not exist; the model has 'default'/],
      [{ newAdapterName: 'default' }, /Adapter with name default already exists/],
      [{ topK: 0 }, /topK 0 is not a positive integer/],
      [{ topK: 2.5 }, /topK 2.5/],
      [{ thresholdEpsilon: Number.NaN }, /thresholdEpsilon null is not a finite number/],
      [{ mitigationLambda: '0.5' }, /mitigationLambda "0.5" is not a finite number/],
      [{ concurrency: 0 }, /concurrency 0 is not a positive integer; it is how many layers are analysed at once/],
      [{ certify: 1 }, /certify 1 must be true or false/],
    ];
    for (const [options, message] of cases) {
      const e = await reduceIntruderDimension(peft, { ...quiet, ...options }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(IntruderReductionError);
      expect((e as Error).message).toMatch(message);
    }
    expect(peft.adapters).toEqual(['default']);
    expect(tf.memory().numTensors).toBe(count);
    peft.dispose();
  });

  it('refuses layers with a merged adapter (W would not be the base weight)', async () => {
    const peft = await fixtureModel();
    peft.mergeAdapter();
    await expect(reduceIntruderDimension(peft, quiet)).rejects.toThrow(
      /'embed' has merged adapters \(default\).*unmergeAdapter/,
    );
    expect(peft.adapters).toEqual(['default']);
    peft.dispose();
  });

  it('refuses a grouped convolution, whose update is not one matrix', async () => {
    class Grouped extends Module {
      conv = this.registerModule('conv', new Conv2d(4, 8, 3, { groups: 2 }));
      forward(x: tf.Tensor) {
        return this.conv.call(x);
      }
    }
    const peft = getPeftModel(new Grouped(), { r: 2, targetModules: ['conv'] });
    await expect(reduceIntruderDimension(peft, quiet)).rejects.toThrow(/'conv' is a grouped convolution/);
    expect(peft.adapters).toEqual(['default']);
    peft.dispose();
  });

  it('stops on an abort between layers: nothing added, nothing leaked', async () => {
    const peft = await fixtureModel();
    const count = tf.memory().numTensors;
    const { e, reports, layers } = await abortAfter(peft, 2, 1);
    expect((e as Error).message).toBe('stop');
    // no layer analysed after the abort
    expect([reports, layers > 2]).toEqual([2, true]);
    expect(peft.adapters).toEqual(['default']);
    expect(peft.activeAdapters).toEqual(['default']);
    expect(tf.memory().numTensors).toBe(count);
    peft.dispose();
  });
});

/** Runs the reduction with `concurrency`, aborted once `at` layers are done; what it threw and how many layers it reported. */
async function abortAfter(peft: Parameters<typeof reduceIntruderDimension>[0], at: number, concurrency: number) {
  const controller = new AbortController();
  let reports = 0;
  let layers = 0;
  const e = await reduceIntruderDimension(peft, {
    ...quiet,
    concurrency,
    signal: controller.signal,
    onProgress: (done, total) => {
      reports++;
      layers = total;
      if (done === at) controller.abort(new Error('stop'));
    },
  }).catch((x: unknown) => x);
  return { e, reports, layers };
}

describe('reduceIntruderDimension: layers analysed at once', () => {
  it('gives the same log lines, in layer order, the same reports and the same new factors as one at a time', async () => {
    const runs = [];
    for (const concurrency of [1, 3]) {
      const peft = await fixtureModel('gpt');
      randomise(peft, 'default', 0.3, 5);
      const lines: string[] = [];
      const progress: string[] = [];
      const report = await reduceIntruderDimension(peft, {
        concurrency,
        certify: true,
        loggingSink: (l) => lines.push(l),
        onProgress: (done, total, path) => progress.push(`${done}/${total} ${path}`),
      });
      const deltas: Float32Array[] = [];
      for (const [, layer] of peft.loraLayers()) {
        const d = getDeltaWeight(layer, 'intruder_reduced');
        deltas.push((await d.data()) as Float32Array);
        d.dispose();
      }
      runs.push({ lines, progress, layers: report.layers.map((l) => [l.path, l.intruders, l.cosine]), deltas });
      peft.dispose();
    }
    const [one, three] = runs as [(typeof runs)[0], (typeof runs)[0]];
    expect(one.lines.length).toBeGreaterThan(3);
    expect(three.lines).toEqual(one.lines);
    expect(three.progress).toEqual(one.progress);
    expect(three.layers).toEqual(one.layers);
    expect(three.deltas).toEqual(one.deltas);
  });

  it('stops on an abort with layers in flight: nothing added, nothing leaked', async () => {
    const peft = await fixtureModel();
    const count = tf.memory().numTensors;
    const { e, reports, layers } = await abortAfter(peft, 1, 3);
    expect((e as Error).message).toBe('stop');
    // at most the layers already in flight finish after the abort, and the others never start
    expect(reports).toBeLessThanOrEqual(3);
    expect(layers).toBeGreaterThan(3);
    expect(peft.adapters).toEqual(['default']);
    expect(tf.memory().numTensors).toBe(count);
    peft.dispose();
  });
});

describe('WeightSvdCache', () => {
  it('decomposes each weight once across calls, and again once the weight has new values', async () => {
    const peft = await fixtureModel();
    const cache = new WeightSvdCache();
    // exactCosines: every layer through W's SVD (without it, certified layers need none)
    const first = await reduceIntruderDimension(peft, {
      ...quiet,
      svdCache: cache,
      newAdapterName: 'r1',
      exactCosines: true,
    });
    expect(cache.stats.computed).toBe(5);
    const count = tf.memory().numTensors;
    // another λ: no SVD, no analysis again (they do not depend on λ or the threshold)
    const second = await reduceIntruderDimension(peft, {
      ...quiet,
      svdCache: cache,
      newAdapterName: 'r2',
      mitigationLambda: 0.2,
      oldAdapterName: 'default',
      exactCosines: true,
    });
    expect(cache.stats).toMatchObject({ computed: 5, hits: 0, analysesComputed: 5, analysisHits: 5 });
    expect(second.layers.map((l) => l.intruders)).toEqual(first.layers.map((l) => l.intruders));
    expect(tf.memory().numTensors).toBe(count + 10); // r2's factors
    // the same result as without a cache
    const fresh = await fixtureModel();
    await reduceIntruderDimension(fresh, { ...quiet, mitigationLambda: 0.2, exactCosines: true });
    for (const [path, layer] of peft.loraLayers()) {
      const a = getDeltaWeight(layer, 'r2');
      const b = getDeltaWeight(layerAt(fresh, path), 'intruder_reduced');
      expect(maxRelativeError(await a.data(), await b.data())).toBeLessThan(1e-6);
      tf.dispose([a, b]);
    }
    // a weight given new values is decomposed again
    const w = layerAt(peft, 'q_proj').baseLayer.weight;
    tf.tidy(() => w.assign(tf.mul(w, 1.5)));
    await reduceIntruderDimension(peft, { ...quiet, svdCache: cache, newAdapterName: 'r3', exactCosines: true });
    expect(cache.stats.computed).toBe(6);
    cache.dispose();
    expect(cache.size).toBe(0);
    fresh.dispose();
    peft.dispose();
  });

  it('keeps each adapter’s analysis: two adapters on one base, alternated, are analysed once each', async () => {
    const peft = await fixtureModel();
    await loadAdapter(peft, join(FIX, 'net', 'adapter'), { adapterName: 'other' });
    randomise(peft, 'other', 0.3, 7);
    const cache = new WeightSvdCache();
    for (const [i, oldAdapterName] of ['default', 'other', 'default', 'other'].entries())
      await reduceIntruderDimension(peft, {
        ...quiet,
        svdCache: cache,
        oldAdapterName,
        newAdapterName: `r${i}`,
        exactCosines: true,
      });
    // W's SVDs once (the second adapter finds them held), each adapter's analysis once
    expect(cache.stats).toMatchObject({ computed: 5, hits: 5, analysesComputed: 10, analysisHits: 10 });
    cache.dispose();
    peft.dispose();
  });
});
