import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { Embedding, Linear, Module, manualSeed } from '@lora/nn';
import {
  type LoraEmbedding,
  LoraLinear,
  doraVariant,
  getDeltaWeight,
  getPeftModel,
  loadAdapter,
  loraConfig,
  lookupLoraInit,
  lookupLoraVariant,
  registerLoraInit,
  registerLoraVariant,
  serializeAdapter,
} from '@lora/core';
// a method package from outside core: importing it registers an init, a variant and a dispatcher
import { FrozenLinear, LoraFrozenLinear, gatedVariant, initialised } from '../__fixtures__/method-package/index.js';

beforeAll(async () => {
  await initBackend('cpu');
});
afterEach(() => vi.restoreAllMocks());

class Net extends Module {
  lin = this.registerModule('lin', new Linear(4, 3));
  frozen = this.registerModule('frozen', new FrozenLinear(4, 3));
  emb = this.registerModule('emb', new Embedding(6, 4));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.add(this.lin.call(x), this.frozen.call(x)));
  }
}

const close = async (a: tf.Tensor, b: tf.Tensor, tol = 1e-6) =>
  expect(maxRelativeError(await a.data(), await b.data())).toBeLessThan(tol);

describe('a method package plugs in without touching @lora/core', () => {
  it('its init, variant and dispatcher all run through getPeftModel: the closed-form output, merge, unmerge and save', async () => {
    manualSeed(0);
    const net = new Net();
    const x = tf.randomNormal([2, 4], 0, 1, 'float32', 1);
    const base = { lin: net.lin.call(x) as tf.Tensor, frozen: net.frozen.call(x) as tf.Tensor };
    initialised.length = 0;
    const peft = getPeftModel(net, {
      r: 2,
      loraAlpha: 4, // s = 2
      targetModules: ['lin', 'frozen'],
      initLoraWeights: 'fixture_ones',
      extra: { gate_config: { gate: 0.5 } },
    });
    // the init ran on both layers (the package's own layer included), with the adapter's config
    expect(initialised).toEqual([
      { path: 'lin', kind: 'linear', gate: 0.5 },
      { path: 'frozen', kind: 'linear', gate: 0.5 },
    ]);
    const layers = new Map(peft.loraLayers());
    expect(layers.get('lin')).toBeInstanceOf(LoraLinear);
    expect(layers.get('frozen')).toBeInstanceOf(LoraFrozenLinear); // made by the dispatcher
    for (const layer of layers.values()) expect(layer.variantOf('default')).toBe(gatedVariant);
    // A = B = 1: B·A = r·1, so the adapter adds gate·s·r·Σx to every output
    const sum = tf.sum(x, 1, true);
    const wanted = (b: tf.Tensor) => tf.add(b, tf.mul(sum, 0.5 * 2 * 2));
    const expected = { lin: wanted(base.lin), frozen: wanted(base.frozen) };
    const before = tf.memory().numTensors;
    for (const [path, layer] of layers) {
      const y = layer.call(x) as tf.Tensor;
      await close(y, expected[path as 'lin' | 'frozen']);
      y.dispose();
    }
    expect(tf.memory().numTensors).toBe(before); // the forward passes keep nothing
    // merge writes gate·ΔW into the base weight (the forward then runs the base alone); unmerge takes it out
    const merged = peft.model.getSubmodule('lin') as LoraLinear;
    const w0 = tf.clone(merged.baseLayer.weight);
    peft.mergeAdapter();
    await close(merged.baseLayer.weight, tf.add(w0, tf.mul(tf.mul(tf.ones([3, 4]), 2 * 2), 0.5)));
    const y = merged.call(x) as tf.Tensor;
    await close(y, expected.lin);
    peft.unmergeAdapter();
    await close(merged.baseLayer.weight, w0);
    // a mixed batch: the variant's output on its rows, the base model's on the others
    const mixed = peft.forwardMixed(['default', '__base__'], x) as tf.Tensor;
    const rows = tf.tidy(() =>
      tf.concat([
        tf.slice(tf.add(expected.lin, expected.frozen), [0, 0], [1, 3]),
        tf.slice(tf.add(base.lin, base.frozen), [1, 0], [1, 3]),
      ]),
    );
    await close(mixed, rows);
    tf.dispose([mixed, rows]);
    // saved under PEFT's names, the dispatched layer's too
    const { weights } = await serializeAdapter(peft);
    const again = await loadAdapter(new Net(), {
      'adapter_config.json': (await serializeAdapter(peft)).config,
      'adapter_model.safetensors': weights,
    });
    expect([...again.model.loraLayers()].map(([p]) => p)).toEqual(['lin', 'frozen']);
    const y2 = again.model.model.getSubmodule('frozen').call(x) as tf.Tensor;
    await close(y2, (peft.model.getSubmodule('frozen') as LoraFrozenLinear).call(x) as tf.Tensor);
    tf.dispose([x, w0, y, y2, sum, ...Object.values(base), ...Object.values(expected)]);
    peft.dispose();
    again.model.dispose();
  });

  it('variants are resolved as PEFT resolves them: one per adapter, on the layers they serve; DoRA serves a dispatched layer', async () => {
    const net = new Net();
    expect(() => getPeftModel(net, { targetModules: ['emb'], extra: { gate_config: { gate: 1 } } })).toThrow(
      "Invalid or unsupported variant combination: ('gate_config',) (on a LoraEmbedding at 'emb'",
    );
    expect(net.getSubmodule('emb')).toBeInstanceOf(Embedding); // nothing was wrapped
    expect(() =>
      getPeftModel(net, { targetModules: ['lin'], useDora: true, extra: { gate_config: { gate: 1 } } }),
    ).toThrow("Invalid or unsupported variant combination: ('gate_config', 'use_dora')");
    // DoRA on the package's layer: a magnitude per output unit, and a no-op at init (B = 0)
    const x = tf.randomNormal([2, 4], 0, 1, 'float32', 2);
    const y0 = net.frozen.call(x) as tf.Tensor;
    const peft = getPeftModel(net, { r: 2, targetModules: ['frozen'], useDora: true });
    const layer = peft.model.getSubmodule('frozen') as LoraFrozenLinear;
    expect(layer.variantOf('default')).toBe(doraVariant);
    expect(layer.savedTensors('default').lora_magnitude_vector?.shape).toEqual([3]);
    const y = layer.call(x) as tf.Tensor;
    await close(y, y0);
    // the package's init on an Embedding: PEFT's rule for a method init there is the default init
    peft.addAdapter('ones', loraConfig({ r: 2, targetModules: ['emb'], initLoraWeights: 'fixture_ones' }));
    const emb = peft.model.getSubmodule('emb') as LoraEmbedding;
    expect(Array.from(await emb.factorA('ones').data()).every((v) => v === 0)).toBe(true);
    tf.dispose([x, y0, y]);
    peft.dispose();
  });

  it('registries refuse a taken name unless override, give back what they replaced, and name the package of a method init', () => {
    expect(() => registerLoraInit('fixture_ones', () => {})).toThrow(
      "an initialisation named 'fixture_ones' is already registered; pass { override: true } to replace it",
    );
    expect(() => registerLoraInit('gaussian', () => {})).toThrow(/already registered/);
    expect(() => registerLoraVariant({ ...doraVariant })).toThrow(
      "a LoRA variant named 'dora' is already registered; pass { override: true } to replace it",
    );
    expect(() => registerLoraVariant({ ...doraVariant, name: 'half', forward: undefined as never })).toThrow(
      "LoRA variant 'half' has no forward() method",
    );
    const builtin = lookupLoraInit('gaussian');
    const seen: string[] = [];
    const restore = registerLoraInit('gaussian', (ctx) => void seen.push(ctx.path), {
      override: true,
      kinds: ['linear'],
    });
    getPeftModel(new Net(), { targetModules: ['lin'], initLoraWeights: 'gaussian' }).dispose();
    expect(seen).toEqual(['lin']);
    restore();
    expect(lookupLoraInit('gaussian')).toBe(builtin);
    expect(lookupLoraInit('pissa_niter_4')).toBe(lookupLoraInit('pissa'));
    expect(lookupLoraVariant('dora')).toBe(doraVariant);
    expect(() => lookupLoraInit('eva')).toThrow(
      "init_lora_weights='eva' is provided by @lora/eva: npm install @lora/eva and import it before creating the LoRA model",
    );
    // validation asks the registry: registered names pass, others fail listing what is known
    expect(loraConfig({ initLoraWeights: 'fixture_ones' }).initLoraWeights).toBe('fixture_ones');
    expect(() => loraConfig({ initLoraWeights: 'nope' })).toThrow(
      "Unknown initialization init_lora_weights='nope'; known: true, false, 'gaussian', 'pissa', 'olora', 'orthogonal', 'fixture_ones', 'loftq' (@lora/loftq), 'eva' (@lora/eva), 'lora_ga' (@lora/loraga), or a name registered with registerLoraInit",
    );
  });

  it('an asynchronous initialiser: getPeftModel returns at once, the model waits for initialized(), DoRA starts from its result, a failure removes the adapter', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const restore = registerLoraInit('fixture_async', async (ctx) => {
      await gate;
      ctx.loraB.assign(tf.onesLike(ctx.loraB));
    });
    const x = tf.randomNormal([2, 4], 0, 1, 'float32', 4);
    const peft = getPeftModel(new Net(), {
      r: 2,
      targetModules: ['lin'],
      initLoraWeights: 'fixture_async',
      useDora: true,
    });
    const layer = peft.model.getSubmodule('lin') as LoraLinear;
    expect(() => peft.call(x)).toThrow(
      'adapter \'default\' is still being initialised (init_lora_weights="fixture_async" is asynchronous): await peft.initialized() first',
    );
    expect(layer.variantOf('default')).toBeUndefined(); // the variant's init waits for the initialiser
    release();
    await peft.initialized();
    expect(Array.from(await layer.factorB('default').data()).every((v) => v === 1)).toBe(true);
    // DoRA's magnitude is ‖W + ΔW‖ with the initialiser's B
    const norms = tf.tidy(() => tf.norm(tf.add(layer.baseLayer.weight, layer.getDeltaWeight('default')), 2, 1));
    await close(layer.loraMagnitudeVector.get('default').weight, norms);
    tf.dispose([peft.call(x) as tf.Tensor, norms]);
    peft.dispose();
    restore();

    const failing = registerLoraInit('fixture_broken', async () => {
      throw new Error('no calibration data');
    });
    const net = new Net();
    const before = tf.memory().numTensors;
    const broken = getPeftModel(net, { targetModules: ['lin'], initLoraWeights: 'fixture_broken' });
    await expect(broken.initialized()).rejects.toThrow('no calibration data');
    expect(net.getSubmodule('lin')).toBeInstanceOf(Linear); // the adapter and its layer are gone
    expect(broken.adapters).toEqual([]);
    expect(tf.memory().numTensors).toBe(before);
    failing();
    x.dispose();
    net.dispose();
  });

  it('updateAdapterLayer re-creates an adapter on one layer at a new rank: active, trainable, and recorded in rankPattern / alphaPattern', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    const peft = getPeftModel(new Net(), {
      r: 4,
      loraAlpha: 8,
      targetModules: ['lin', 'frozen'],
      rankPattern: { frozen: 2 },
      initLoraWeights: false,
    });
    const before = tf.memory().numTensors;
    peft.updateAdapterLayer('lin', 'default', { r: 6, loraAlpha: 12 });
    peft.updateAdapterLayer('frozen', 'default', { r: 4 }); // the config's r, but the pattern says 2
    expect(tf.memory().numTensors).toBe(before); // the new A and B replace the old ones, which are freed
    const lin = peft.model.getSubmodule('lin') as LoraLinear;
    expect(lin.factorA('default').shape).toEqual([6, 4]);
    expect(lin.scaling.get('default')).toBe(2);
    expect(lin.activeAdapters).toEqual(['default']);
    expect(lin.factorA('default').trainable).toBe(true);
    const config = peft.peftConfig.get('default')!;
    expect(config.rankPattern).toEqual({ lin: 6, frozen: 4 });
    expect(Object.keys(config.rankPattern)).toEqual(['frozen', 'lin']); // a layer's own key first: it wins over earlier patterns
    expect(config.alphaPattern).toEqual({ lin: 12 });
    // the saved adapter loads back at those shapes
    const { config: json, weights } = await serializeAdapter(peft);
    const { model: again } = await loadAdapter(new Net(), {
      'adapter_config.json': json,
      'adapter_model.safetensors': weights,
    });
    expect((again.model.getSubmodule('lin') as LoraLinear).factorA('default').shape).toEqual([6, 4]);
    expect((again.model.getSubmodule('frozen') as LoraFrozenLinear).factorA('default').shape).toEqual([4, 4]);
    expect(() => peft.updateAdapterLayer('emb', 'default', { r: 2 })).toThrow(
      "'emb' holds no LoRA layer with adapter 'default'",
    );
    expect(warn).not.toHaveBeenCalled();
    peft.dispose();
    again.dispose();
  });

  it('a method package walks the layers as TunerLayers: kind, factors, scaling, ΔW', async () => {
    const peft = getPeftModel(new Net(), { r: 2, loraAlpha: 6, targetModules: ['lin', 'emb'], initLoraWeights: false });
    const seen: [string, string][] = [];
    for (const [path, layer] of peft.loraLayers()) {
      seen.push([path, layer.kind]);
      const delta = getDeltaWeight(layer, 'default');
      const s = layer.scaling.get('default') as number;
      const ba = tf.tidy(() => {
        const p = tf.mul(tf.matMul(layer.factorB('default'), layer.factorA('default')), s);
        return layer.kind === 'embedding' ? tf.transpose(p) : p;
      });
      expect(delta.shape).toEqual(layer.baseLayer.weight.shape);
      await close(delta, ba);
      tf.dispose([delta, ba]);
    }
    expect(seen).toEqual([
      ['lin', 'linear'],
      ['emb', 'embedding'],
    ]);
    expect(() => getDeltaWeight(peft.model.getSubmodule('lin') as LoraLinear, 'other')).toThrow(
      "adapter 'other' is not on this LoraLinear; it has default",
    );
    peft.dispose();
  });

  it("packaging: a bundler keeps the package's registering modules (its sideEffects) and tree-shakes @lora/core", async () => {
    const { build } = await import('esbuild');
    const bundle = async (contents: string) => {
      const out = await build({
        stdin: { contents, resolveDir: join(import.meta.dirname, '..', '__fixtures__'), loader: 'js' },
        bundle: true,
        write: false,
        format: 'esm',
        platform: 'neutral',
        conditions: ['@lora/source'],
        external: ['@tensorflow/*', '@lora/nn', '@lora/linalg', '@lora/tensor'],
        logLevel: 'silent',
      });
      return out.outputFiles[0]?.text ?? '';
    };
    // `import '@lora/eva'` for its registrations alone: the entry and the registering module are kept
    const registered = await bundle("import './method-package/index.js';");
    expect(registered).toMatch(/registerLoraInit\(["']fixture_ones["']/);
    expect(registered).toContain('registerLoraVariant(gatedVariant)');
    expect(registered).toMatch(/registerLoraDispatcher\(["']fixture_frozen["']/);
    // core is "sideEffects": false and seeds its registries by value: what is not used is left out
    const small = await bundle("import { loraScaling } from '@lora/core'; console.log(loraScaling(8, 4, false));");
    expect(small.length).toBeLessThan(1000);
    expect(small).not.toContain('Orthogonal initialization');
    expect(small).not.toContain('DoRA');
  });
});
