import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { initBackend, readSafetensorsHeader } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { TransposedLinear, manualSeed, withoutInit } from '@lora/nn';
import { FIX, GPT_D as D, GptNet, gptNet, readAdapterFiles, readFixture } from '../fixture-nets.test-util';
import {
  LoraLinear,
  type PeftModel,
  addWeightedAdapter,
  adapterStateDict,
  getPeftModel,
  loadAdapter,
  mergeAdapterWeights,
  resolveTargets,
  loraConfig,
  saveAdapter,
} from '@lora/core';

interface CaseRecord {
  warnings: string[];
  fan_in_fan_out: boolean;
  targets?: string[];
  load_warnings?: string[];
  load_fan_in_fan_out?: boolean;
  layers?: Record<string, boolean>;
  saved_fan_in_fan_out?: boolean;
}
const record = JSON.parse(readFileSync(join(FIX, 'fifo-record.json'), 'utf8')) as Record<string, CaseRecord> & {
  olora: { lora_A_shape: number[]; forward: string };
};

/** console.warn calls about fan_in_fan_out during `f`. */
async function warningsOf<T>(f: () => T | Promise<T>): Promise<{ result: T; warnings: string[] }> {
  const spy = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
  try {
    const result = await f();
    return { result, warnings: spy.mock.calls.map((c) => String(c[0])).filter((m) => m.includes('fan_in_fan_out')) };
  } finally {
    spy.mockRestore();
  }
}

const CASES = ['fifo-plain', 'fifo-dora', 'fifo-bias', 'fifo-patterns'] as const;

await describeEachBackend('LoRA on TransposedLinear (fan_in_fan_out) against PEFT', () => {
  let want: Record<string, tf.Tensor> = {};
  const w = (k: string) => {
    if (Object.keys(want).length === 0) want = readFixture('fifo-expected.safetensors');
    const t = want[k];
    if (!t) throw new Error(`fifo-expected has no '${k}'`);
    return t;
  };
  afterEach(() => {
    tf.dispose(Object.values(want));
    want = {};
  });

  it("builds the GPT-2-like net with transformers' Conv1D initial weights after the same seed, and its output", async () => {
    manualSeed(0);
    const net = new GptNet().eval();
    const base = readFixture('fifo-base.safetensors');
    for (const [k, t] of Object.entries(net.stateDict())) {
      expect(t.shape, k).toEqual(base[k]!.shape);
      // normal draws agree with torch's to float32 rounding (vectorised log/cos), uniform ones exactly
      expect(maxRelativeError(await t.data(), await base[k]!.data()), k).toBeLessThan(1e-6);
    }
    net.loadStateDict(base);
    const y = net.call(w('x')) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await w('base_out').data())).toBeLessThan(1e-5);
    tf.dispose([y, ...Object.values(base)]);
    net.dispose();
  });

  for (const name of CASES) {
    it(`${name}: PEFT's adapter loads with PEFT's warnings and gives its outputs and merged weights`, async () => {
      const before = tf.memory().numTensors;
      const { result, warnings } = await warningsOf(() => loadAdapter(gptNet(), join(FIX, name)));
      const { model: peft, missingKeys, unexpectedKeys } = result;
      peft.eval();
      expect([missingKeys, unexpectedKeys]).toEqual([[], []]);
      expect(warnings).toEqual(record[name]!.load_warnings);
      expect(peft.peftConfig.get('default')!.fanInFanOut).toBe(record[name]!.load_fan_in_fan_out);
      const layers = [...peft.loraLayers()];
      expect(layers.map(([p]) => `base_model.model.${p}`).sort()).toEqual(record[name]!.targets);
      for (const [p, l] of layers) expect((l as LoraLinear).fanInFanOut, p).toBe(p !== 'head');
      const y = peft.call(w('x')) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await w(`${name}.out`).data())).toBeLessThan(1e-5);
      y.dispose();
      const merged = peft.mergeAndUnload() as GptNet;
      expect(merged.h.at(0).attn.c_attn).toBeInstanceOf(TransposedLinear);
      for (const [k, t] of Object.entries(merged.stateDict())) {
        expect(t.shape, k).toEqual(w(`${name}.merged.${k}`).shape);
        expect(
          maxRelativeError(await t.data(), await w(`${name}.merged.${k}`).data()),
          `${name} merged ${k}`,
        ).toBeLessThan(1e-5);
      }
      merged.dispose();
      tf.dispose(Object.values(want));
      want = {};
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('merge then unmerge gives the outputs back and restores the [in, out] weights (DoRA, lora_bias)', async () => {
    for (const name of ['fifo-dora', 'fifo-bias']) {
      const { model: peft } = await loadAdapter(gptNet(), join(FIX, name));
      peft.eval();
      const layer = peft.model.getSubmodule('h.0.attn.c_attn') as LoraLinear;
      const w0 = Array.from(await layer.baseLayer.weight.data());
      const b0 = Array.from(await layer.baseLayer.bias!.data());
      w('x');
      const before = tf.memory().numTensors;
      const y0 = peft.call(w('x')) as tf.Tensor;
      peft.mergeAdapter();
      const y1 = peft.call(w('x')) as tf.Tensor;
      expect(maxRelativeError(await y1.data(), await w(`${name}.out`).data()), name).toBeLessThan(1e-5);
      expect(
        maxRelativeError(await layer.baseLayer.weight.data(), await w(`${name}.merged.h.0.attn.c_attn.weight`).data()),
        name,
      ).toBeLessThan(1e-5);
      peft.unmergeAdapter();
      expect(maxRelativeError(await layer.baseLayer.weight.data(), w0), name).toBeLessThan(1e-6);
      expect(maxRelativeError(await layer.baseLayer.bias!.data(), b0), name).toBeLessThan(1e-6);
      const y2 = peft.call(w('x')) as tf.Tensor;
      expect(maxRelativeError(await y2.data(), await y0.data()), name).toBeLessThan(1e-5);
      tf.dispose([y0, y1, y2]);
      expect(tf.memory().numTensors).toBe(before);
      peft.dispose();
    }
  });

  it("gives PEFT's gradients for the adapters' parameters (A, B, lora_B's bias, DoRA's magnitude)", async () => {
    for (const name of CASES) {
      const { model: peft } = await warningsOf(() =>
        loadAdapter(gptNet(), join(FIX, name), { isTrainable: true }),
      ).then((r) => r.result);
      peft.eval(); // dropout off, as in the oracle
      w('x');
      const before = tf.memory().numTensors;
      const params = peft.trainableParameters();
      const names = new Map([...peft.namedParameters()].map(([n, p]) => [p, n]));
      const { value, grads } = tf.variableGrads(
        () => tf.mean(tf.square(peft.call(w('x')) as tf.Tensor)) as tf.Scalar,
        params,
      );
      expect(params.length).toBeGreaterThan(0);
      for (const p of params) {
        const n = names.get(p) as string;
        expect(
          maxRelativeError(await grads[p.name]!.data(), await w(`${name}.grad.${n}`).data()),
          `${name} ${n}`,
        ).toBeLessThan(1e-5);
      }
      tf.dispose([value, ...Object.values(grads)]);
      expect(tf.memory().numTensors).toBe(before);
      peft.dispose();
    }
  });

  it("initialises as PEFT after the same seed: A (kaiming over [r, in]), B = 0, DoRA's magnitude (column norms), orthogonal", async () => {
    const before = tf.memory().numTensors;
    const net = gptNet();
    manualSeed(20);
    const dora = getPeftModel(net, {
      r: 4,
      loraAlpha: 8,
      fanInFanOut: true,
      useDora: true,
      targetModules: ['c_attn', 'c_fc'],
    });
    let seen = 0;
    for (const [n, p] of dora.namedParameters()) {
      if (!n.includes('lora_')) continue;
      expect(p.shape, n).toEqual(w(`init.${n}`).shape);
      expect(maxRelativeError(await p.data(), await w(`init.${n}`).data()), n).toBeLessThan(1e-6);
      seen++;
    }
    expect(seen).toBe(4 * 3);
    dora.dispose();
    manualSeed(21);
    const orth = getPeftModel(gptNet(), {
      r: 4,
      loraAlpha: 8,
      fanInFanOut: true,
      targetModules: ['c_attn', 'c_fc'],
      initLoraWeights: 'orthogonal',
    });
    let compared = 0;
    for (const [n, p] of orth.namedParameters()) {
      if (!n.includes('lora_')) continue;
      expect(maxRelativeError(await p.data(), await w(`orthogonal.${n}`).data()), n).toBeLessThan(1e-5);
      compared++;
    }
    expect(compared).toBe(Object.keys(want).filter((k) => k.startsWith('orthogonal.')).length);
    orth.dispose();
    tf.dispose(Object.values(want));
    want = {};
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('fan_in_fan_out on the cpu backend', () => {
  beforeAll(async () => {
    await initBackend('cpu');
  });

  it("corrects fan_in_fan_out per layer with PEFT's warnings, and keeps the config as PEFT leaves it", async () => {
    const cases: Record<string, { fanInFanOut: boolean; targetModules: string[] }> = {
      'linear-true': { fanInFanOut: true, targetModules: ['head'] },
      'conv1d-false': { fanInFanOut: false, targetModules: ['c_fc'] },
      'mixed-true': { fanInFanOut: true, targetModules: ['c_fc', 'head'] },
      'mixed-false': { fanInFanOut: false, targetModules: ['c_fc', 'head'] },
    };
    for (const [name, fields] of Object.entries(cases)) {
      const config = loraConfig({ r: 2, ...fields });
      const { result: peft, warnings } = await warningsOf(() =>
        getPeftModel(
          withoutInit(() => new GptNet()),
          config,
        ),
      );
      expect(warnings, name).toEqual(record[name]!.warnings);
      expect(peft.peftConfig.get('default')!.fanInFanOut, name).toBe(record[name]!.fan_in_fan_out);
      expect(config.fanInFanOut, `${name}: the caller's config is left alone`).toBe(fields.fanInFanOut);
      const layers = Object.fromEntries(
        [...peft.loraLayers()].map(([p, l]) => [`base_model.model.${p}`, (l as LoraLinear).fanInFanOut]),
      );
      expect(layers, name).toEqual(record[name]!.layers);
      peft.dispose();
    }
    // a LoraLinear built by hand with the wrong flag is refused with the fix
    const lin = withoutInit(() => new TransposedLinear(6, 4));
    expect(
      () =>
        new LoraLinear(lin, 'a', {
          r: 2,
          loraAlpha: 2,
          loraDropout: 0,
          useRslora: false,
          initLoraWeights: false,
          loraBias: false,
          fanInFanOut: false,
        }),
    ).toThrow(
      'fanInFanOut is false but the base layer is a TransposedLinear, whose weight is stored [in, out]; set fanInFanOut to true',
    );
    lin.dispose();
  });

  it("'all-linear' takes the TransposedLinear layers and the Linear head (PEFT's rule), and LoRA layers for a second adapter", async () => {
    const net = withoutInit(() => new GptNet());
    const all = resolveTargets(net, loraConfig({ targetModules: 'all-linear' })).targeted;
    expect(all.map((p) => `base_model.model.${p}`)).toEqual(record['fifo-patterns']!.targets);
    const { result: peft } = await warningsOf(() =>
      getPeftModel(net, { r: 2, fanInFanOut: true, targetModules: 'all-linear' }),
    );
    // the LoRA layers themselves, never their base_layer / lora_A / lora_B
    expect(resolveTargets(peft.model, loraConfig({ targetModules: 'all-linear' })).targeted).toEqual(all);
    peft.addAdapter('second', loraConfig({ r: 3, fanInFanOut: true, targetModules: 'all-linear' }));
    for (const [p, l] of peft.loraLayers()) {
      expect(l.settings.get('second')?.r, p).toBe(3);
      expect(l.settings.get('second')?.fanInFanOut, p).toBe(p !== 'head');
    }
    peft.dispose();
  });

  it('PiSSA decomposes Wᵀ as PEFT does: the residual [in, out] weights and B·A, the model unchanged', async () => {
    const want = readFixture('fifo-expected.safetensors');
    const before = tf.memory().numTensors;
    const peft = getPeftModel(gptNet(), {
      r: 3,
      loraAlpha: 6,
      fanInFanOut: true,
      targetModules: ['c_attn', 'mlp.c_proj'],
      initLoraWeights: 'pissa',
    });
    for (const path of ['h.0.attn.c_attn', 'h.1.mlp.c_proj']) {
      const layer = peft.model.getSubmodule(path) as LoraLinear;
      expect(
        maxRelativeError(await layer.baseLayer.weight.data(), await want[`pissa.${path}.residual`]!.data()),
        `${path} residual`,
      ).toBeLessThan(1e-4);
      const ba = tf.matMul(layer.factorB('default'), layer.factorA('default'));
      expect(ba.shape).toEqual(want[`pissa.${path}.ba`]!.shape);
      expect(maxRelativeError(await ba.data(), await want[`pissa.${path}.ba`]!.data()), `${path} B·A`).toBeLessThan(
        1e-4,
      );
      ba.dispose();
    }
    const y = peft.call(want.x) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await want['pissa.out']!.data())).toBeLessThan(1e-5);
    expect(maxRelativeError(await y.data(), await want.base_out!.data())).toBeLessThan(1e-5);
    y.dispose();
    peft.dispose();
    tf.dispose(Object.values(want));
    expect(tf.memory().numTensors).toBe(before - Object.keys(want).length);
  });

  it('OLoRA on a fan_in_fan_out layer is refused: PEFT 0.21 builds lora_A of the wrong shape there', () => {
    // what PEFT does (recorded by the oracle): A gets [r, out] and the forward pass fails
    expect(record.olora.lora_A_shape).toEqual([2, 4 * D]);
    expect(record.olora.forward).toMatch(/shapes cannot be multiplied/);
    const net = gptNet();
    const before = tf.memory().numTensors;
    expect(() =>
      getPeftModel(net, { r: 2, fanInFanOut: true, targetModules: ['c_fc'], initLoraWeights: 'olora' }),
    ).toThrow(
      /init_lora_weights='olora' does not work on a fan_in_fan_out layer \(TransposedLinear, weight \[8, 32\] stored \[in, out\]\)/,
    );
    expect(tf.memory().numTensors).toBe(before);
    net.dispose();
  });

  it('merges fan_in_fan_out adapters into weight files by name as PEFT merges them (ΔWᵀ, DoRA per column, lora_bias)', async () => {
    const base = readFixture('fifo-base.safetensors');
    const want = readFixture('fifo-expected.safetensors');
    const before = tf.memory().numTensors;
    for (const name of CASES) {
      const adapter = readAdapterFiles(name);
      // fifo-patterns also holds the Linear head, so PEFT saved fan_in_fan_out = false; the square
      // attn.c_proj weights need to be named as [in, out] (the other shapes tell by themselves)
      const options = name === 'fifo-patterns' ? { fanInFanOut: (p: string) => p !== 'head' } : {};
      const { merged, missing } = mergeAdapterWeights(base, adapter, options);
      expect(missing).toEqual([]);
      for (const k of Object.keys(base)) {
        const got = merged[k] ?? base[k]!;
        expect(
          maxRelativeError(await got.data(), await want[`${name}.merged.${k}`]!.data()),
          `${name} ${k}`,
        ).toBeLessThan(1e-5);
      }
      tf.dispose([...Object.values(merged), ...Object.values(adapter.tensors)]);
    }
    expect(tf.memory().numTensors).toBe(before);
    const plain = readAdapterFiles('fifo-plain');
    const wrong = { 'h.0.attn.c_attn.weight': tf.zeros([8, 8]) };
    expect(() => mergeAdapterWeights(wrong, plain)).toThrow(
      "the adapter's update for 'h.0.attn.c_attn' is [24, 8] (out, in) but the weight is [8, 8]; was the adapter trained on another base model?",
    );
    tf.dispose([
      ...Object.values(base),
      ...Object.values(want),
      ...Object.values(plain.tensors),
      ...Object.values(wrong),
    ]);
  });

  it("saves fan_in_fan_out adapters with PEFT's keys, shapes and config, and reads them back", async () => {
    for (const name of ['fifo-dora', 'fifo-bias', 'fifo-corrected']) {
      const peftDir = join(FIX, name);
      const { model: peft } = await warningsOf(() => loadAdapter(gptNet(), peftDir)).then((r) => r.result);
      const out = mkdtempSync(join(tmpdir(), 'lora-fifo-'));
      await saveAdapter(peft, out);
      expect(readdirSync(out).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
      const header = (dir: string) =>
        readSafetensorsHeader(new Uint8Array(readFileSync(join(dir, 'adapter_model.safetensors'))));
      const shapes = (h: ReturnType<typeof header>) =>
        Object.fromEntries(h.entries.map((e) => [e.name, [e.dtype, e.shape]]));
      expect(shapes(header(out)), name).toEqual(shapes(header(peftDir)));
      const ours = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
      const theirs = JSON.parse(readFileSync(join(peftDir, 'adapter_config.json'), 'utf8'));
      expect(Object.keys(ours).sort()).toEqual(Object.keys(theirs).sort());
      for (const k of Object.keys(theirs))
        if (k !== 'target_modules' && k !== 'auto_mapping') expect(ours[k], `${name} ${k}`).toEqual(theirs[k]);
      expect([...ours.target_modules].sort()).toEqual([...theirs.target_modules].sort());
      const again = await loadAdapter(gptNet(), out, { strict: true });
      const a = adapterStateDict(peft);
      const b = adapterStateDict(again.model);
      for (const k of Object.keys(a)) expect(maxRelativeError(await b[k]!.data(), await a[k]!.data()), k).toBe(0);
      peft.dispose();
      again.model.dispose();
    }
    // PEFT corrected fan_in_fan_out=False to True on the Conv1D layers and saved True; so do we
    expect(record['conv1d-false']!.saved_fan_in_fan_out).toBe(true);
    const { result: made } = await warningsOf(() =>
      getPeftModel(gptNet(), { r: 2, fanInFanOut: false, targetModules: ['c_fc'] }),
    );
    const out = mkdtempSync(join(tmpdir(), 'lora-fifo-'));
    await saveAdapter(made, out);
    expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).fan_in_fan_out).toBe(true);
    made.dispose();
  });

  it("addWeightedAdapter on fan_in_fan_out layers gives PEFT's delta weights and outputs (svd on ΔWᵀ, cat)", async () => {
    const want = readFixture('fifo-expected.safetensors');
    const { model: peft } = await loadAdapter(gptNet(), join(FIX, 'fifo-weighted', 'a'), { adapterName: 'a' });
    await loadAdapter(peft, join(FIX, 'fifo-weighted', 'b'), { adapterName: 'b' });
    peft.eval();
    for (const [label, options] of [
      ['svd', { combinationType: 'svd', svdRank: 3 }],
      ['cat', { combinationType: 'cat' }],
    ] as const) {
      await addWeightedAdapter(peft, ['a', 'b'], [0.5, 1.5], label, options);
      peft.setAdapter(label);
      for (const path of ['h.0.attn.c_attn', 'h.1.attn.c_proj']) {
        const delta = (peft.model.getSubmodule(path) as LoraLinear).getDeltaWeight(label);
        expect(delta.shape).toEqual(want[`weighted.${label}.delta.${path}`]!.shape);
        // SVD factors carry arbitrary signs; their product, the delta, does not
        expect(
          maxRelativeError(await delta.data(), await want[`weighted.${label}.delta.${path}`]!.data()),
          `${label} ${path}`,
        ).toBeLessThan(1e-4);
        delta.dispose();
      }
      const y = peft.call(want.x) as tf.Tensor;
      expect(maxRelativeError(await y.data(), await want[`weighted.${label}.out`]!.data()), label).toBeLessThan(1e-4);
      y.dispose();
    }
    peft.dispose();
    tf.dispose(Object.values(want));
  });

  it('trains LoRA on TransposedLinear layers: the loss falls, the [in, out] base weights never change', async () => {
    const { AdamW, train } = await import('@lora/nn');
    manualSeed(3);
    const peft: PeftModel = getPeftModel(gptNet(), {
      r: 4,
      loraAlpha: 8,
      fanInFanOut: true,
      useDora: true,
      targetModules: ['c_attn', 'c_fc'],
    });
    peft.train();
    const frozen = Object.fromEntries(
      await Promise.all(
        [...peft.namedParameters()]
          .filter(([n]) => !n.includes('lora_'))
          .map(async ([n, p]) => [n, Array.from(await p.data())] as const),
      ),
    );
    const x = tf.randomNormal([4, 5, D], 0, 1, 'float32', 5);
    const y = tf.randomNormal([4, 5, 4], 0, 1, 'float32', 6);
    const opt = new AdamW(peft.trainableParameters(), { lr: 3e-2 });
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
      if (!n.includes('lora_')) expect(Array.from(await p.data()), n).toEqual(frozen[n]);
    opt.dispose();
    tf.dispose([x, y]);
    peft.dispose();
  });
});
