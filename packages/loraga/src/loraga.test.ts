import { cpSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LoraConfigError,
  type TunerLayer,
  getDeltaWeight,
  getPeftModel,
  loadAdapter,
  loraConfig,
  saveAdapter,
} from '@lora/core';
import { HalfLinear, Linear, Module, manualSeed, withoutInit } from '@lora/nn';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import {
  LoraGaCacheError,
  estimateGradients,
  hasLoraGaGradient,
  preprocessLoraga,
  releaseLoraGaGradients,
} from '@lora/loraga';
import { LoraGaNet, fixtureTrainStep, readFixture, withWeights } from './loraga-net.test-util';

const TARGETS = ['embed', 'q_proj', 'c_fc', 'conv', 'head'];
let expected: Record<string, tf.Tensor>;
const tmp = mkdtempSync(join(tmpdir(), 'loraga-'));

beforeAll(async () => {
  await initBackend('cpu');
  expected = readFixture('net-expected.safetensors');
});
afterAll(() => tf.dispose(Object.values(expected)));

const config = (extra: Parameters<typeof loraConfig>[0] = {}) =>
  loraConfig({ r: 4, loraAlpha: 8, targetModules: TARGETS, initLoraWeights: 'lora_ga', loraGaConfig: {}, ...extra });
const fresh = () => withWeights(() => new LoraGaNet(), 'net-base.safetensors');
const outputOf = (m: { call(x: tf.Tensor): unknown }) => {
  const y = m.call(expected.x as tf.Tensor) as tf.Tensor;
  const v = y.dataSync().slice();
  y.dispose();
  return v;
};
/** Gradients of one run, by path, as arrays. */
async function gradientsOf(net: Module, options: Parameters<typeof estimateGradients>[3] = {}) {
  const grads = await estimateGradients(net, config(), fixtureTrainStep(net as LoraGaNet, expected), options);
  const out = Object.fromEntries([...grads].map(([k, g]) => [k, (g.dataSync() as Float32Array).slice()]));
  tf.dispose([...grads.values()]);
  return out;
}

describe("errors, worded as PEFT's", () => {
  it('no loraGaConfig; lora_ga without a config at init; a quantized target; no supported layer; no target modules', async () => {
    const net = fresh();
    const step = fixtureTrainStep(net, expected);
    await expect(preprocessLoraga(net, { r: 4, targetModules: ['q_proj'] }, step)).rejects.toThrow(
      new LoraConfigError(
        "If you want to use LoRA-GA, please initialize the LoraConfig with init_lora_weights='lora_ga' and lora_ga_config=LoraGAConfig(...).",
        { field: 'loraGaConfig' },
      ),
    );
    await preprocessLoraga(net, config({ targetModules: ['q_proj'] }), step);
    expect(() => getPeftModel(net, { r: 4, targetModules: ['q_proj'], initLoraWeights: 'lora_ga' })).toThrow(
      "lora_ga_config must be provided when init_lora_weights='lora_ga'. Please pass lora_ga_config=LoraGAConfig(...) to LoraConfig.",
    );
    // the gradient stays attached (as PEFT's attribute): a corrected config still finds it
    expect(hasLoraGaGradient(net.q_proj)).toBe(true);
    expect(releaseLoraGaGradients(net)).toBe(1);

    class QuantLinear extends Linear {
      quantState = { blockSize: 64 };
    }
    const quant = fresh();
    quant.setSubmodule(
      'head',
      withoutInit(() => new QuantLinear(24, 20)),
    );
    await expect(preprocessLoraga(quant, config(), fixtureTrainStep(quant, expected))).rejects.toThrow(
      "LoRA-GA does not support quantized models. Found quantized module: 'head'. LoRA-GA requires full-precision gradients during preprocessing.",
    );
    await expect(preprocessLoraga(net, config({ targetModules: ['embed', 'conv'] }), step)).rejects.toThrow(
      /^No supported layers found for LoRA-GA initialization\. LoRA-GA only supports nn\.Linear and Conv1D layers\. .* The targets are embed \(Embedding\), conv \(Conv1d\)\./,
    );
    await expect(preprocessLoraga(net, config({ targetModules: ['nothing_here'] }), step)).rejects.toThrow(
      /No supported layers found for LoRA-GA initialization.*Target modules \["nothing_here"\] not found/,
    );
    await expect(preprocessLoraga(net, config({ targetModules: null }), step)).rejects.toThrow(
      'Please specify `target_modules` in `peft_config`',
    );
    await expect(preprocessLoraga(net, config(), async () => {})).rejects.toThrow(
      'trainStep never called backward(loss)',
    );
    quant.dispose();
    net.dispose();
  });

  it("a 16-bit target (weightStorage: 'checkpoint') is refused before any backward, naming it and the fix", async () => {
    const net = fresh();
    const half = HalfLinear.fromLinear(net.q_proj as Linear, { format: 'bf16' });
    net.setSubmodule('q_proj', half).dispose();
    const before = tf.memory().numTensors;
    let backwards = 0;
    await expect(
      preprocessLoraga(net, config({ targetModules: ['q_proj'] }), async () => {
        backwards++;
      }),
    ).rejects.toThrow(
      /LoRA-GA's gradient estimate on 'q_proj' needs the base weight as float32, but this HalfLinear keeps it encoded \(bf16\): load the model with weightStorage: 'float32'/,
    );
    expect(backwards).toBe(0);
    expect(tf.memory().numTensors).toBe(before);
    net.dispose();
  });

  it('a layer with fewer than 2r singular components is refused at getPeftModel, naming it; the gradient stays', async () => {
    const net = fresh();
    const cfg = config({ targetModules: ['q_proj', 'head'], rankPattern: { q_proj: 7 } });
    await preprocessLoraga(net, cfg, fixtureTrainStep(net, expected));
    expect(() => getPeftModel(net, cfg)).toThrow(
      "LoRA-GA takes 2r = 14 singular components of the gradient of 'q_proj', whose weight [16, 12] has only 12; use r ≤ 6 for this layer (rankPattern)",
    );
    expect(hasLoraGaGradient(net.q_proj) && hasLoraGaGradient(net.head)).toBe(true);
    releaseLoraGaGradients(net);
    net.dispose();
  });

  it('an abort signal stops the estimation at the next backward pass and frees its sums', async () => {
    const net = fresh();
    const ctrl = new AbortController();
    const before = tf.memory().numTensors;
    const run = estimateGradients(net, config(), fixtureTrainStep(net, expected), {
      onProgress: ({ passes }) => passes === 2 && ctrl.abort(new Error('stop here')),
      signal: ctrl.signal,
    });
    await expect(run).rejects.toThrow('stop here');
    expect(tf.memory().numTensors).toBe(before);
    net.dispose();
  });
});

describe('memory', () => {
  it('offloaded: the backend holds no running sum between passes; on the backend: one sum a target', async () => {
    const seen: Record<string, number[]> = { on: [], off: [] };
    const results: Record<string, Record<string, Float32Array>> = {};
    for (const mode of ['on', 'off'] as const) {
      const net = fresh();
      const before = tf.memory().numBytes;
      results[mode] = await gradientsOf(net, {
        offload: mode === 'off',
        onProgress: () => seen[mode]?.push(tf.memory().numBytes - before),
      });
      expect(tf.memory().numBytes).toBe(before);
      net.dispose();
    }
    const sumBytes = 4 * (16 * 12 + 16 * 24 + 20 * 24);
    expect(seen.on).toEqual([sumBytes, sumBytes, sumBytes]);
    expect(seen.off).toEqual([0, 0, 0]);
    for (const p of ['q_proj', 'c_fc', 'head'])
      expect(maxRelativeError(results.off?.[p] as Float32Array, results.on?.[p] as Float32Array)).toBe(0);
  });

  it('the backend peak: the sums add one copy of the targets; offload removes it; targetsPerPass never raises it', async () => {
    // the peak of live tensor bytes, watched where every new tensor passes (engine.trackTensor)
    const engine = tf.engine() as unknown as { trackTensor(t: unknown, b: unknown): void; state: { numBytes: number } };
    const track = engine.trackTensor;
    const peaks: Record<string, number> = {};
    const grads: Record<string, Record<string, Float32Array>> = {};
    try {
      for (const [mode, options] of [
        ['plain', {}],
        ['offload', { offload: true }],
        ['one a pass', { offload: true, targetsPerPass: 1 }],
      ] as const) {
        const net = fresh();
        const base = engine.state.numBytes;
        let peak = base;
        engine.trackTensor = function (this: typeof engine, t, b) {
          track.call(this, t, b);
          peak = Math.max(peak, this.state.numBytes);
        };
        grads[mode] = await gradientsOf(net, options);
        engine.trackTensor = track;
        peaks[mode] = peak - base;
        net.dispose();
      }
    } finally {
      engine.trackTensor = track;
    }
    const sums = 4 * (16 * 12 + 16 * 24 + 20 * 24);
    expect(peaks.plain).toBeGreaterThanOrEqual((peaks.offload as number) + sums);
    // one target a pass never holds more; on this tiny net the peak is the forward's activations (the
    // backward frees each gradient as soon as it is past it), so it can be equal
    expect(peaks['one a pass']).toBeLessThanOrEqual(peaks.offload as number);
    for (const p of ['q_proj', 'c_fc', 'head'])
      expect(
        maxRelativeError(grads['one a pass']?.[p] as Float32Array, grads.plain?.[p] as Float32Array),
        p,
      ).toBeLessThan(1e-6);
    console.log(`peak live bytes above the model: ${JSON.stringify(peaks)}`);
  });

  it('a weight shared by two targets is differentiated once and averaged per layer, as PEFT', async () => {
    class Tied extends Module {
      a = this.registerModule('a', new Linear(4, 4, { bias: false }));
      b = this.registerModule('b', new Linear(4, 4, { bias: false }));
      constructor() {
        super();
        this.b.setParameter('weight', this.a.weight);
      }
      forward(x: tf.Tensor) {
        return this.b.call(tf.tanh(this.a.call(this.b.call(x))));
      }
    }
    manualSeed(3);
    const net = new Tied();
    const x = tf.randomNormal([3, 4], 0, 1, 'float32', 7);
    const loss = () => tf.sum(tf.square(net.call(x) as tf.Tensor)) as tf.Scalar;
    const grads = await estimateGradients(net, config({ targetModules: ['a', 'b'] }), async (backward) => {
      await backward(loss);
    });
    const full = tf.variableGrads(loss, [net.a.weight]).grads[net.a.weight.name] as tf.Tensor;
    // a runs once a pass, b twice: the same summed gradient, divided by 1 and by 2
    expect(maxRelativeError((grads.get('a') as tf.Tensor).dataSync(), full.dataSync())).toBeLessThan(1e-6);
    const half = tf.div(full, 2);
    expect(maxRelativeError((grads.get('b') as tf.Tensor).dataSync(), half.dataSync())).toBeLessThan(1e-6);
    tf.dispose([...grads.values(), full, half, x]);
    net.dispose();
  });
});

describe('fallbacks', () => {
  it('no gradient (a loaded adapter, a layer the loss never reaches): the default init, with a warning for the latter', async () => {
    const net = fresh();
    const warnings: string[] = [];
    // the loss reads the model's output up to c_fc only: head gets no gradient
    await preprocessLoraga(
      net,
      config(),
      async (backward) => {
        await backward(() => tf.sum(tf.tanh(net.c_fc.call(net.q_proj.call(net.embed.call(expected.x))))) as tf.Scalar);
      },
      { warn: (m) => warnings.push(m) },
    );
    expect(warnings).toEqual([
      'LoRA-GA: no gradient reached head in 1 backward pass(es); getPeftModel gives it the default LoRA init',
    ]);
    const w0 = net.head.weight.dataSync().slice();
    const peft = getPeftModel(net, config());
    await peft.initialized();
    const layers = new Map<string, TunerLayer>(peft.loraLayers());
    const head = layers.get('head') as TunerLayer;
    expect(tf.tidy(() => tf.max(tf.abs(head.factorB('default'))).dataSync()[0])).toBe(0);
    expect(maxRelativeError(head.baseLayer.weight.dataSync(), w0)).toBe(0);
    // q_proj did get one: its base weight moved
    const q = layers.get('q_proj') as TunerLayer;
    expect(tf.tidy(() => tf.max(tf.abs(getDeltaWeight(q, 'default'))).dataSync()[0])).toBeGreaterThan(0);
    peft.dispose();
  });

  it("DoRA on top: the magnitude is taken after LoRA-GA moved the weight; the output is the base model's", async () => {
    const net = fresh();
    const cfg = config({ useDora: true, targetModules: ['q_proj', 'c_fc', 'head'] });
    await preprocessLoraga(net, cfg, fixtureTrainStep(net, expected));
    const peft = getPeftModel(net, cfg);
    await peft.initialized();
    peft.eval();
    expect(maxRelativeError(outputOf(peft), expected.base_out?.dataSync() as Float32Array)).toBeLessThan(1e-5);
    peft.dispose();
  });

  for (const scale of ['stable', 'weight_svd', 'gd_scale', 'unit'] as const)
    it(`random + ${scale}: r of the first 2r components, one index set for A and B; W_new + s·B·A = W0`, async () => {
      const net = fresh();
      const cfg = config({ targetModules: ['q_proj'], loraGaConfig: { direction: 'random', scale } });
      const w0 = net.q_proj.weight.dataSync().slice();
      await preprocessLoraga(net, cfg, fixtureTrainStep(net, expected));
      const peft = getPeftModel(net, cfg);
      await peft.initialized();
      peft.eval();
      const layer = new Map<string, TunerLayer>(peft.loraLayers()).get('q_proj') as TunerLayer;
      const delta = getDeltaWeight(layer, 'default');
      const restored = tf.add(layer.baseLayer.weight, delta);
      expect(maxRelativeError(restored.dataSync(), w0)).toBeLessThan(1e-5);
      // A's rows are right singular vectors: orthonormal (‖A‖ = √r, or √r/s with gd_scale)
      const aat = tf.tidy(() => tf.matMul(layer.factorA('default'), layer.factorA('default'), false, true));
      const s = layer.scaling.get('default') as number;
      const eye = tf.tidy(() => tf.mul(tf.eye(4), scale === 'gd_scale' ? 1 / (s * s) : 1));
      expect(maxRelativeError(aat.dataSync(), eye.dataSync())).toBeLessThan(1e-4);
      expect(maxRelativeError(outputOf(peft), expected.base_out?.dataSync() as Float32Array)).toBeLessThan(1e-5);
      tf.dispose([delta, restored, aat, eye]);
      peft.dispose();
    });
});

describe('the gradient cache', () => {
  it('written after the estimation (a bare file name works), read instead of estimating, the same init', async () => {
    const dir = mkdtempSync(join(tmp, 'bare-'));
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const first = fresh();
      await preprocessLoraga(first, config(), fixtureTrainStep(first, expected), { cacheFile: 'grads.safetensors' });
      expect(statSync(join(dir, 'grads.safetensors')).size).toBeGreaterThan(0);
      manualSeed(5);
      const a = getPeftModel(first, config());
      await a.initialized();
      const second = fresh();
      let ran = false;
      for (const offload of [false, true]) {
        await preprocessLoraga(
          second,
          config(),
          async () => {
            ran = true;
          },
          { cacheFile: 'grads.safetensors', offload },
        );
        if (!offload) releaseLoraGaGradients(second);
      }
      expect(ran).toBe(false);
      manualSeed(5);
      const b = getPeftModel(second, config());
      await b.initialized();
      a.eval();
      b.eval();
      expect(maxRelativeError(outputOf(b), outputOf(a))).toBe(0);
      for (const [path, layer] of b.loraLayers()) {
        const other = new Map<string, TunerLayer>(a.loraLayers()).get(path) as TunerLayer;
        expect(maxRelativeError(layer.baseLayer.weight.dataSync(), other.baseLayer.weight.dataSync()), path).toBe(0);
      }
      a.dispose();
      b.dispose();
    } finally {
      process.chdir(cwd);
    }
  });

  it('a cache of other targets, other weights, another format, or a directory is refused, naming what differs', async () => {
    const file = join(tmp, 'checked', 'grads.safetensors');
    const net = fresh();
    await preprocessLoraga(net, config(), fixtureTrainStep(net, expected), { cacheFile: file });
    releaseLoraGaGradients(net);
    const never = async () => {
      throw new Error('trainStep must not run when a cache exists');
    };
    const refused = async (model: Module, cfg: ReturnType<typeof config>, path: string) => {
      const before = tf.memory().numTensors;
      const e = await preprocessLoraga(model, cfg, never, { cacheFile: path }).catch((x: unknown) => x);
      expect(tf.memory().numTensors).toBe(before);
      for (const [, m] of model.namedModules()) expect(hasLoraGaGradient(m)).toBe(false);
      expect(e).toBeInstanceOf(LoraGaCacheError);
      return e as LoraGaCacheError;
    };
    let e = await refused(net, config({ targetModules: ['q_proj', 'head'] }), file);
    expect([e.field, e.message]).toEqual([
      'targets',
      `LoRA-GA gradient cache ${file}: was made for other targets (not targeted now: c_fc); use the targetModules it was made with, or delete it to estimate again`,
    ]);
    const moved = fresh();
    tf.tidy(() => moved.conv.weight.assign(tf.mul(moved.conv.weight, 1.01)));
    e = await refused(moved, config(), file);
    expect(e.field).toBe('weights');
    expect(e.message).toContain('was estimated on other base weights (different: conv.weight)');
    const zip = join(tmp, 'peft-cache.pt');
    writeFileSync(zip, Buffer.from('PK\u0003\u0004 a torch.save archive'));
    expect((await refused(net, config(), zip)).message).toContain("is a torch.save file (PEFT's cache format)");
    const other = join(tmp, 'other.safetensors');
    writeFileSync(other, await serializeSafetensors({ w: tf.zeros([2]) }, { metadata: { format: 'pt' } }));
    expect((await refused(net, config(), other)).message).toContain(
      'is a safetensors file but not a LoRA-GA gradient cache (its metadata has format "pt"',
    );
    const folder = join(tmp, 'a-folder');
    mkdirSync(folder);
    expect((await refused(net, config(), folder)).field).toBe('file');
    net.dispose();
    moved.dispose();
  });

  it('a cache of the same targets with other shapes (another model size) is refused before its weights are compared', async () => {
    class Two extends Module {
      readonly proj: Linear;
      readonly head: Linear;
      constructor(hidden: number) {
        super();
        this.proj = this.registerModule('proj', new Linear(4, hidden, { bias: false }));
        this.head = this.registerModule('head', new Linear(hidden, 3, { bias: false }));
      }
      forward(x: tf.Tensor) {
        return this.head.call(tf.tanh(this.proj.call(x) as tf.Tensor));
      }
    }
    const file = join(tmp, 'sizes', 'grads.safetensors');
    const cfg = config({ targetModules: ['proj', 'head'], r: 1 });
    const x = tf.randomNormal([5, 4], 0, 1, 'float32', 11);
    const step = (net: Two) => async (backward: (loss: () => tf.Scalar) => Promise<number>) => {
      await backward(() => tf.sum(tf.square(net.call(x) as tf.Tensor)) as tf.Scalar);
    };
    manualSeed(2);
    const small = new Two(6);
    await preprocessLoraga(small, cfg, step(small), { cacheFile: file });
    releaseLoraGaGradients(small);
    const big = new Two(8);
    const before = tf.memory().numTensors;
    const e = await preprocessLoraga(big, cfg, step(big), { cacheFile: file }).catch((err: unknown) => err);
    expect(tf.memory().numTensors).toBe(before);
    expect(e).toBeInstanceOf(LoraGaCacheError);
    expect([(e as LoraGaCacheError).field, (e as LoraGaCacheError).message]).toEqual([
      'shape',
      `LoRA-GA gradient cache ${file}: holds a gradient of shape [6, 4] for 'proj', whose weight is [8, 4]: the cache is for another model; delete it to estimate again`,
    ]);
    for (const [, m] of big.namedModules()) expect(hasLoraGaGradient(m)).toBe(false);
    tf.dispose(x);
    small.dispose();
    big.dispose();
  });

  it('an empty file is no cache (estimated and written, as PEFT); a cache that cannot be written fails before trainStep runs', async () => {
    const empty = join(tmp, 'empty.safetensors');
    writeFileSync(empty, '');
    const net = fresh();
    await preprocessLoraga(net, config(), fixtureTrainStep(net, expected), { cacheFile: empty });
    expect(readFileSync(empty).length).toBeGreaterThan(0);
    releaseLoraGaGradients(net);
    const blocker = join(tmp, 'not-a-folder');
    writeFileSync(blocker, 'x');
    let ran = false;
    await expect(
      preprocessLoraga(
        net,
        config(),
        async () => {
          ran = true;
        },
        { cacheFile: join(blocker, 'sub', 'grads.safetensors') },
      ),
    ).rejects.toThrow(`cannot be written: ${blocker} is a file, not a folder`);
    expect(ran).toBe(false);
    net.dispose();
  });
});

describe('saving', () => {
  for (const [direction, scale] of [
    ['ArB2r', 'stable'],
    ['ArBr', 'weight_svd'],
    ['A2rBr', 'gd_scale'],
    ['random', 'unit'],
  ] as const)
    it(`${direction} + ${scale}: a saved adapter gives the same outputs on the modified base, and converted (pathInitialModelForWeightConversion) on the original one`, async () => {
      const dir = mkdtempSync(join(tmp, 'save-'));
      const net = fresh();
      // Linear, Conv1D and Conv1d: the conversion (PEFT's subtract_mutated_init) takes lora_A / lora_B keys only,
      // so an Embedding's update would be left out of it (core warns), as in PEFT
      const cfg = config({ targetModules: ['q_proj', 'c_fc', 'conv', 'head'], loraGaConfig: { direction, scale } });
      await preprocessLoraga(net, cfg, fixtureTrainStep(net, expected));
      const peft = getPeftModel(net, cfg);
      await peft.initialized();
      await saveAdapter(peft, join(dir, 'init'));
      // "training": move every factor
      for (const [, layer] of peft.loraLayers())
        tf.tidy(() => {
          const a = layer.factorA('default');
          a.assign(tf.add(a, tf.mul(tf.onesLike(a), 0.01)));
          const b = layer.factorB('default');
          b.assign(tf.add(b, tf.mul(tf.onesLike(b), 0.02)));
        });
      peft.eval();
      const trained = outputOf(peft);
      await saveAdapter(peft, join(dir, 'plain'));
      await saveAdapter(peft, join(dir, 'lora'), { pathInitialModelForWeightConversion: join(dir, 'init') });
      // the modified base (LoRA-GA took s·B₀·A₀ out of it) with the plain adapter
      const residual = fresh();
      const state = Object.fromEntries(
        [...peft.loraLayers()].map(([p, l]) => [`${p}.weight`, l.baseLayer.weight] as const),
      );
      residual.loadStateDict(state, { strict: false });
      const keep = process.env.LORA_LORAGA_ROUNDTRIP_DIR;
      if (keep) {
        // for tools/oracle/check_loraga_roundtrip.py: PEFT loads these and must give `trained`
        const out = join(keep, `${direction}-${scale}`);
        mkdirSync(out, { recursive: true });
        cpSync(dir, out, { recursive: true });
        writeFileSync(join(out, 'residual.safetensors'), await serializeSafetensors(residual.stateDict()));
        const y = tf.tensor(trained, [2, 5, 20]);
        writeFileSync(
          join(out, 'trained.safetensors'),
          await serializeSafetensors({ x: expected.x as tf.Tensor, out: y }),
        );
        y.dispose();
      }
      const { model: onResidual } = await loadAdapter(residual, join(dir, 'plain'));
      expect(maxRelativeError(outputOf(onResidual), trained)).toBeLessThan(1e-5);
      // the original base with the converted (rank 2r) adapter
      const { model: onOriginal } = await loadAdapter(fresh(), join(dir, 'lora'));
      expect(onOriginal.peftConfig.get('default')?.r).toBe(8);
      expect(maxRelativeError(outputOf(onOriginal), trained)).toBeLessThan(1e-5);
      for (const m of [peft, onResidual, onOriginal]) m.dispose();
    });
});
