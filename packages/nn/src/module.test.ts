import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { Dropout, Linear, Module, ModuleList, Sequential, SiLU, manualSeed } from '@lora/nn';

beforeAll(async () => {
  await initBackend('cpu');
});

class Tiny extends Module {
  layers = this.registerModule('layers', new ModuleList([new Linear(4, 4), new Linear(4, 2, { bias: false })]));
  drop = this.registerModule('drop', new Dropout(0.5, { seed: 1 }));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.layers.at(1).call(this.drop.call(this.layers.at(0).call(x))));
  }
}

describe('Module', () => {
  it('resolves and replaces submodules by dotted path, keeping typed fields in step', () => {
    const m = new Tiny();
    const first = m.getSubmodule('layers.0') as Linear;
    expect(first.outFeatures).toBe(4);
    expect(() => m.getSubmodule('layers.5')).toThrow(
      /layers \(ModuleList\) has no submodule '5' \(looking for 'layers.5'\); children are: 0, 1/,
    );
    const replacement = new Sequential(new Linear(4, 4), new SiLU());
    const old = m.setSubmodule('layers.0', replacement);
    expect(old).toBe(first);
    expect(m.getSubmodule('layers.0')).toBe(replacement);
    expect(m.layers.at(0)).toBe(replacement);
    expect([...m.namedParameters()].map(([n]) => n)).toEqual([
      'layers.0.0.weight',
      'layers.0.0.bias',
      'layers.1.weight',
    ]);
    old.dispose();
    m.dispose();
  });

  it('runs pre-hooks and hooks around forward, and removes them', () => {
    const lin = new Linear(2, 2);
    const seen: number[][] = [];
    const pre = lin.registerForwardPreHook((_m, [x]) => [tf.mul(x as tf.Tensor, 0)]);
    const post = lin.registerForwardHook((_m, args, out) => {
      seen.push((args[0] as tf.Tensor).shape);
      return tf.add(out as tf.Tensor, 1);
    });
    const y = tf.tidy(() => lin.call(tf.ones([3, 2])) as tf.Tensor);
    // zeroed input → output is the bias; the hook adds one
    const bias = lin.bias!.arraySync() as number[];
    expect(y.arraySync()).toEqual([0, 1, 2].map(() => bias.map((b) => Math.fround(b + 1))));
    expect(seen).toEqual([[3, 2]]);
    pre.remove();
    post.remove();
    const z = tf.tidy(() => lin.call(tf.zeros([1, 2])) as tf.Tensor);
    expect(z.arraySync()).toEqual([bias]);
    tf.dispose([y, z]);
    lin.dispose();
  });

  it('loads state dicts strictly or not, reporting keys as PyTorch does, and changes nothing on error', () => {
    const m = new Tiny();
    const before = m.layers.at(1).getParameter('weight')!.arraySync();
    const sd = { 'layers.0.weight': tf.ones([4, 4]), 'layers.0.bias': tf.ones([4]), 'extra.weight': tf.ones([1]) };
    expect(() => m.loadStateDict(sd)).toThrow(
      /Missing key\(s\) in state_dict: "layers.1.weight"[\s\S]*Unexpected key\(s\) in state_dict: "extra.weight"/,
    );
    expect((m.getSubmodule('layers.0') as Linear).weight.arraySync()).not.toEqual(tf.ones([4, 4]).arraySync());
    const r = m.loadStateDict(sd, { strict: false });
    expect(r).toEqual({ missingKeys: ['layers.1.weight'], unexpectedKeys: ['extra.weight'] });
    expect((m.getSubmodule('layers.0') as Linear).weight.arraySync()).toEqual(tf.ones([4, 4]).arraySync());
    expect(m.layers.at(1).getParameter('weight')!.arraySync()).toEqual(before);
    const bad = { 'layers.1.weight': tf.ones([3, 4]) };
    expect(() => m.loadStateDict(bad, { strict: false })).toThrow(
      /size mismatch for layers.1.weight: copying a param with shape \[3, 4\] from checkpoint, the shape in current model is \[2, 4\]/,
    );
    tf.dispose([...Object.values(sd), ...Object.values(bad)]);
    // the loaded values survive the caller disposing its tensors
    expect((m.getSubmodule('layers.0') as Linear).weight.arraySync()).toEqual(tf.ones([4, 4]).arraySync());
    m.dispose();
  });

  it('switches train/eval everywhere; dropout is identity in eval and seeded in train', async () => {
    const m = new Tiny();
    m.eval();
    expect([...m.namedModules()].every(([, x]) => !x.training)).toBe(true);
    const d = new Dropout(0.25, { seed: 7 });
    const x = tf.ones([1000]);
    const a = d.call(x) as tf.Tensor;
    const values = Array.from(await a.data());
    const zeros = values.filter((v) => v === 0).length;
    expect(zeros).toBeGreaterThan(180);
    expect(zeros).toBeLessThan(320);
    expect(values.filter((v) => v !== 0).every((v) => Math.abs(v - 1 / 0.75) < 1e-6)).toBe(true);
    const again = new Dropout(0.25, { seed: 7 }).call(x) as tf.Tensor;
    expect(Array.from(await again.data())).toEqual(values);
    d.eval();
    const same = d.call(x) as tf.Tensor;
    expect(Array.from(await same.data())).toEqual(new Array(1000).fill(1));
    expect(() => new Dropout(1.5)).toThrow(/dropout probability has to be between 0 and 1, but got 1.5/);
    tf.dispose([x, a, again, same]);
    m.dispose();
  });

  it('dispose frees every parameter and buffer', () => {
    const before = tf.memory().numTensors;
    manualSeed(0);
    const m = new Tiny();
    expect(tf.memory().numTensors).toBe(before + 3);
    m.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('rejects bad layer arguments with the value', () => {
    expect(() => new Linear(0, 3)).toThrow(/Linear: inFeatures must be a positive integer, got 0/);
    const lin = new Linear(3, 2);
    expect(() => lin.call(tf.ones([2, 4]))).toThrow(/input's last dimension is 4 but the weight expects 3/);
    lin.dispose();
  });
});

it('setParameter re-points the layer field, so a tied weight is the one used', () => {
  const a = new Linear(3, 2, { bias: false });
  const b = new Linear(3, 2, { bias: false });
  a.setParameter('weight', b.weight);
  expect(a.weight).toBe(b.weight);
  const x = tf.ones([1, 3]);
  const ya = a.call(x) as tf.Tensor;
  const yb = b.call(x) as tf.Tensor;
  expect(ya.arraySync()).toEqual(yb.arraySync());
  tf.dispose([x, ya, yb]);
  b.dispose();
});

it('setBuffer replaces a buffer (freeing the old tensor), keeps non-persistent ones out of the state dict, and dispose frees it', () => {
  class Cached extends Module {
    lin = this.registerModule('lin', new Linear(2, 2));
    constructor() {
      super();
      this.registerBuffer('cache', null, false);
    }
    refresh(): void {
      this.setBuffer(
        'cache',
        tf.tidy(() => tf.sum(this.lin.weight, 1)),
      );
    }
    forward(x: tf.Tensor): tf.Tensor {
      return this.lin.call(x) as tf.Tensor;
    }
  }
  const before = tf.memory().numTensors;
  const m = new Cached();
  const withParams = tf.memory().numTensors;
  m.refresh();
  m.refresh();
  expect(tf.memory().numTensors).toBe(withParams + 1);
  expect(Object.keys(m.stateDict()).sort()).toEqual(['lin.bias', 'lin.weight']);
  expect([...m.namedBuffers()].map(([n]) => n)).toEqual(['cache']);
  expect(() => (m as unknown as { setBuffer: (n: string, v: null) => void }).setBuffer('nope', null)).toThrow(
    "Cached has no buffer 'nope'",
  );
  m.dispose();
  expect(tf.memory().numTensors).toBe(before);
});
