import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { LoraConfigError, LoraLinear, getPeftModel } from '@lora/core';
import { AdamW, Linear, ModuleList, manualSeed, train } from '@lora/nn';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { describe, expect, it } from 'vitest';
import {
  LoraQuantizedLinear,
  QuantizationError,
  QuantizedLinear,
  dequantizeModel,
  modelBytes,
  quantizeModel,
} from '@lora/loftq';
import { LoftqNet, baseNet } from './loftq-net.test-util';
import { mat } from './oracle.test-util';

await initBackend('cpu');
const x = tf.tensor2d(mat(5, 16, 80, 1.0), [5, 16]);

/** The LoRA layer at a path of the net. */
const lora = <L = LoraLinear>(net: LoftqNet, path: string) => net.getSubmodule(path) as unknown as L;

/** Gives every adapter on the net's LoRA layers a non-zero B (the default and gaussian inits leave B zero). */
function randomB(net: LoftqNet, seed = 5): void {
  for (const path of ['up', 'down']) {
    const m = net.getSubmodule(path);
    if (!(m instanceof LoraLinear)) continue;
    const b = m.factorB('default');
    b.assign(tf.tensor(mat(b.shape[0] as number, b.shape[1] as number, seed++, 0.3), b.shape));
  }
}

/** The same net with its Linear weights replaced by their dequantized values (what the quantized net computes). */
function floatTwin(q: LoftqNet): LoftqNet {
  const twin = baseNet();
  for (const name of ['up', 'down', 'head'] as const) {
    const m = q[name];
    if (m instanceof QuantizedLinear) {
      const w = m.dequantize();
      twin[name].weight.assign(w);
      w.dispose();
    }
  }
  return twin;
}

describe('LoRA over a quantized base', () => {
  it('getPeftModel wraps QuantizedLinear targets with LoraQuantizedLinear; the output equals LoRA over the dequantized weights', async () => {
    const net = baseNet();
    const report = quantizeModel(net, { bits: 4 });
    expect(report.quantized).toEqual(['up', 'down', 'head']); // no lm_head here: every Linear
    const twin = floatTwin(net);
    manualSeed(3);
    const peft = getPeftModel(net, { r: 4, loraAlpha: 8, targetModules: ['up', 'down'], initLoraWeights: 'gaussian' });
    manualSeed(3);
    const ref = getPeftModel(twin, { r: 4, loraAlpha: 8, targetModules: ['up', 'down'], initLoraWeights: 'gaussian' });
    randomB(net);
    randomB(twin);
    expect(net.up).toBeInstanceOf(LoraQuantizedLinear);
    expect(twin.up).toBeInstanceOf(LoraLinear);
    expect(twin.up).not.toBeInstanceOf(LoraQuantizedLinear);
    // the same draws: A and B equal, and so does the output
    for (const n of ['up', 'down'] as const)
      expect(Array.from(await lora(net, n).factorA('default').data())).toEqual(
        Array.from(await lora(twin, n).factorA('default').data()),
      );
    peft.eval();
    ref.eval();
    const [y, yRef] = [peft.call(x) as tf.Tensor, ref.call(x) as tf.Tensor];
    expect(maxRelativeError(await y.data(), await yRef.data())).toBeLessThan(1e-5);
    // only the adapter trains
    expect(peft.trainableParameters().map((p) => p.shape)).toEqual([
      [4, 16],
      [32, 4],
      [4, 32],
      [16, 4],
    ]);
    tf.dispose([y, yRef]);
    peft.dispose();
    ref.dispose();
  });

  it('training changes A and B and never the packed base; the loss falls', async () => {
    const net = baseNet();
    quantizeModel(net, { bits: 2, blockSize: 32 });
    const words = await Promise.all(
      ['up', 'down', 'head'].map((n) => (net.getSubmodule(n) as QuantizedLinear).weight.data()),
    );
    manualSeed(0);
    const peft = getPeftModel(net, { r: 4, loraAlpha: 4, targetModules: ['up', 'down'] });
    const a0 = await lora(net, 'up').factorA('default').data();
    const target = tf.tensor2d(mat(5, 8, 81, 1.0), [5, 8]);
    const losses: number[] = [];
    const before = tf.memory().numTensors;
    const result = await train(peft, [{ x, target }], {
      optimizer: new AdamW(peft.trainableParameters(), { lr: 1e-2 }),
      epochs: 30,
      progressBar: false,
      loss: (b) => tf.mean(tf.square(tf.sub(peft.call(b.x) as tf.Tensor, b.target))) as tf.Scalar,
    });
    losses.push(...result.losses);
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before + 12); // the optimizer's moments of A and B
    expect(losses.at(-1)).toBeLessThan((losses[0] as number) * 0.8);
    expect(Array.from(await lora(net, 'up').factorA('default').data())).not.toEqual(Array.from(a0));
    const after = await Promise.all(
      ['up', 'down'].map((n) =>
        ((net.getSubmodule(n) as LoraQuantizedLinear).baseLayer as QuantizedLinear).weight.data(),
      ),
    );
    expect(Array.from(after[0] as Float32Array)).toEqual(Array.from(words[0] as Float32Array));
    expect(Array.from(after[1] as Float32Array)).toEqual(Array.from(words[1] as Float32Array));
    target.dispose();
    peft.dispose();
  });

  it('merge dequantizes, adds ΔW and requantizes (PEFT’s bnb merge); with requantizeOnMerge false the merge is exact', async () => {
    for (const requantizeOnMerge of [true, false]) {
      const net = baseNet();
      quantizeModel(net, { bits: 4, requantizeOnMerge });
      manualSeed(1);
      const peft = getPeftModel(net, {
        r: 4,
        loraAlpha: 8,
        targetModules: ['up', 'down'],
        initLoraWeights: 'gaussian',
      });
      randomB(net);
      peft.eval();
      const y0 = peft.call(x) as tf.Tensor;
      const merged = peft.mergeAndUnload();
      expect(merged.getSubmodule('up')).toBeInstanceOf(QuantizedLinear);
      const up = merged.getSubmodule('up') as QuantizedLinear;
      expect(up.format).toBe(requantizeOnMerge ? 'nf4' : 'float32');
      const y1 = merged.call(x) as tf.Tensor;
      const err = maxRelativeError(await y1.data(), await y0.data());
      if (requantizeOnMerge) {
        expect(err).toBeGreaterThan(1e-6); // the merged weight is rounded to NF4 again
        expect(err).toBeLessThan(0.2);
      } else expect(err).toBeLessThan(1e-5);
      tf.dispose([y0, y1]);
      merged.dispose();
    }
  });

  it('merge, unmerge and safe merge on the layer; unmerging a float32 merge restores the weight', async () => {
    const net = baseNet();
    quantizeModel(net, { bits: 8, requantizeOnMerge: false });
    const w0 = (net.up as QuantizedLinear).dequantize();
    manualSeed(2);
    const peft = getPeftModel(net, { r: 2, targetModules: ['up'], initLoraWeights: 'gaussian' });
    const layer = lora<LoraQuantizedLinear>(net, 'up');
    randomB(net);
    peft.eval();
    const y0 = peft.call(x) as tf.Tensor;
    await layer.merge({ safeMerge: true });
    const y1 = peft.call(x) as tf.Tensor;
    expect(maxRelativeError(await y1.data(), await y0.data())).toBeLessThan(1e-5);
    layer.unmerge();
    const w1 = layer.baseLayer.dequantize();
    expect(maxRelativeError(await w1.data(), await w0.data())).toBeLessThan(1e-6);
    // a broken adapter is refused and nothing is written
    layer.factorB('default').assign(tf.fill(layer.factorB('default').shape, Number.NaN));
    await expect(layer.merge({ safeMerge: true })).rejects.toThrow(
      'NaNs detected in the merged weights. The adapter default seems to be broken',
    );
    expect(layer.mergedAdapters).toEqual([]);
    tf.dispose([w0, w1, y0, y1]);
    peft.dispose();
  });

  it('DoRA and inits that rewrite the base weight are refused on a quantized base, with the reason', () => {
    const net = baseNet();
    quantizeModel(net, { bits: 4 });
    expect(() => getPeftModel(net, { r: 4, targetModules: ['up'], useDora: true })).toThrow(LoraConfigError);
    expect(() => getPeftModel(net, { r: 4, targetModules: ['up'], useDora: true })).toThrow(
      "DoRA over a quantized base is not supported here ('up' (QuantizedLinear, nf4))",
    );
    expect(() => getPeftModel(net, { r: 4, targetModules: ['up'], initLoraWeights: 'pissa' })).toThrow(
      "init_lora_weights='pissa' rewrites the base weight, which 'up' (QuantizedLinear, nf4) keeps quantized",
    );
    expect(net.up).toBeInstanceOf(QuantizedLinear); // nothing left behind
    net.dispose();
  });
});

describe('quantizeModel', () => {
  it('replaces Linear layers by name, skips tied weights, reports bytes; dequantizeModel gives Linears back', async () => {
    const net = baseNet();
    const before = modelBytes(net);
    const r = quantizeModel(net, { bits: 4, targetModules: ['up', 'down'] });
    expect(r.quantized).toEqual(['up', 'down']);
    expect(r.bytesBefore).toBe(4 * (16 * 32 + 32 + 32 * 16 + 16));
    expect(r.bytesAfter / r.bytesBefore).toBeLessThan(0.25);
    expect(modelBytes(net)).toBe(before - r.bytesBefore + r.bytesAfter);
    expect(net.head).toBeInstanceOf(Linear);
    expect(dequantizeModel(net)).toEqual(['up', 'down']);
    expect(net.up).toBeInstanceOf(Linear);
    expect(net.up).not.toBeInstanceOf(QuantizedLinear);
    net.dispose();
    // a tied weight stays
    class Tied extends LoftqNet {
      constructor() {
        super();
        this.down.setParameter('weight', this.up.weight, { dispose: true });
      }
    }
    const tied = new Tied();
    const t = quantizeModel(tied, { bits: 8 });
    expect(t.skipped.map((s) => s.path)).toEqual(['up', 'down']);
    expect(t.skipped[0]?.reason).toBe('its weight is shared with down.weight (tied)');
    tied.dispose();
  });

  it('checks everything before changing anything: bits, block sizes per layer, targets, LoRA models', () => {
    const net = baseNet();
    expect(() => quantizeModel(net, { bits: 5 as 4 })).toThrow('quantizeModel: bits is 5');
    const e = (() => {
      try {
        quantizeModel(net, { bits: 2, blockSize: 48 });
      } catch (err) {
        return err as QuantizationError;
      }
    })();
    expect(e).toBeInstanceOf(QuantizationError);
    // up (512 values) takes blocks of 48? no: the first layer that cannot is named, and nothing changed
    expect(e?.message).toContain(
      "quantizeModel: 'up': at 2 bits the normal-float quantizer needs the block size (48) to divide the weight's 512 values",
    );
    expect(net.up).not.toBeInstanceOf(QuantizedLinear);
    expect(() => quantizeModel(net, { targetModules: ['q_prj'] })).toThrow(
      'Target modules ["q_prj"] not found in the base model',
    );
    const peft = getPeftModel(net, { r: 2, targetModules: ['up'] });
    expect(() => quantizeModel(net)).toThrow(
      "quantizeModel: 'up' is already a LoRA layer; quantize the base model first",
    );
    peft.dispose();
  });

  it('a ModuleList of Linears (a transformer block shape) quantizes every layer', () => {
    const list = new ModuleList([new Linear(64, 64), new Linear(64, 128, { bias: false })]);
    const r = quantizeModel(list, { bits: 3 });
    expect(r.quantized).toEqual(['0', '1']);
    expect([...list].every((m) => m instanceof QuantizedLinear)).toBe(true);
    list.dispose();
  });
});
