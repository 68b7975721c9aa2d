import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, describe, expect, it } from 'vitest';
import { parseSafetensors } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import {
  AdamW,
  Conv1d,
  Conv2d,
  Embedding,
  GELU,
  LayerNorm,
  Linear,
  Module,
  ModuleDict,
  ModuleList,
  RMSNorm,
  SGD,
  Sequential,
  SiLU,
  clipGradNorm,
  constantWarmupSchedule,
  cosineWarmupSchedule,
  crossEntropy,
  linearWarmupSchedule,
  manualSeed,
} from '@lora/nn';

const dir = join(import.meta.dirname, '..', '__fixtures__');
const meta = JSON.parse(readFileSync(join(dir, 'torch-nn.json'), 'utf8'));
const bytes = new Uint8Array(readFileSync(join(dir, 'torch-nn.safetensors')));
// Fixture tensors are made on whatever backend is active when a suite starts, and freed at the end.
let fixture: Record<string, tf.Tensor> | null = null;
const fx = (name: string): tf.Tensor => {
  fixture ??= parseSafetensors(bytes, { file: 'torch-nn.safetensors' }).tensors;
  const t = fixture[name];
  if (!t) throw new Error(`fixture has no '${name}'`);
  return t;
};
const freeFixture = () => {
  if (fixture) tf.dispose(Object.values(fixture));
  fixture = null;
};
const close = async (got: tf.Tensor, name: string, tol = 1e-5) => {
  expect(got.shape, name).toEqual(fx(name).shape);
  expect(maxRelativeError(await got.data(), await fx(name).data()), name).toBeLessThan(tol);
};

await describeEachBackend(`layers against torch ${meta.torch}`, () => {
  afterAll(freeFixture);

  it('initialises Linear, Embedding, Conv2d and Conv1d exactly as torch after manual_seed', async () => {
    manualSeed(0);
    const lin = new Linear(16, 8);
    // uniform draws are bit-exact; normal draws (Embedding) are within float32 rounding of torch's vectorised log/cos
    await close(lin.weight, 'init.linear.weight', 1e-7);
    await close(lin.bias!, 'init.linear.bias', 1e-7);
    manualSeed(1);
    const emb = new Embedding(10, 6, { paddingIdx: 2 });
    await close(emb.weight, 'init.embedding.weight', 1e-6);
    manualSeed(2);
    const c2 = new Conv2d(4, 6, [3, 2], { groups: 2 });
    await close(c2.weight, 'init.conv2d.weight', 1e-7);
    await close(c2.bias!, 'init.conv2d.bias', 1e-7);
    manualSeed(3);
    const c1 = new Conv1d(3, 4, 5);
    await close(c1.weight, 'init.conv1d.weight', 1e-7);
    for (const m of [lin, emb, c2, c1]) m.dispose();
  });

  it('Linear on a 3-D input', async () => {
    manualSeed(0);
    const lin = new Linear(16, 8);
    const y = lin.call(fx('fwd.linear.x'));
    await close(y, 'fwd.linear.y');
    tf.dispose(y);
    lin.dispose();
  });

  for (const [name, c] of Object.entries(
    meta.conv2d as Record<
      string,
      {
        cin: number;
        cout: number;
        k: number[];
        stride: number | number[];
        padding: number | number[] | 'same';
        dilation: number;
        groups: number;
      }
    >,
  )) {
    it(`Conv2d ${name}`, async () => {
      const conv = new Conv2d(c.cin, c.cout, c.k, {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
      });
      conv.loadStateDict({ weight: fx(`fwd.${name}.weight`), bias: fx(`fwd.${name}.bias`) });
      const y = conv.call(fx(`fwd.${name}.x`));
      await close(y, `fwd.${name}.y`);
      y.dispose();
      conv.dispose();
    });
  }

  for (const [name, c] of Object.entries(
    meta.conv1d as Record<
      string,
      { cin: number; cout: number; k: number; stride: number; padding: number; dilation: number; groups: number }
    >,
  )) {
    it(`Conv1d ${name}`, async () => {
      const conv = new Conv1d(c.cin, c.cout, c.k, {
        stride: c.stride,
        padding: c.padding,
        dilation: c.dilation,
        groups: c.groups,
      });
      conv.loadStateDict({ weight: fx(`fwd.${name}.weight`), bias: fx(`fwd.${name}.bias`) });
      const y = conv.call(fx(`fwd.${name}.x`));
      await close(y, `fwd.${name}.y`);
      y.dispose();
      conv.dispose();
    });
  }

  it('LayerNorm, RMSNorm, GELU (exact and tanh), SiLU', async () => {
    const x = fx('fwd.linear.x');
    const ln = new LayerNorm(16);
    ln.loadStateDict({ weight: fx('fwd.layernorm.weight'), bias: fx('fwd.layernorm.bias') });
    const rms = new RMSNorm(16, { eps: 1e-6 });
    rms.loadStateDict({ weight: fx('fwd.rmsnorm.weight') });
    const outs: [tf.Tensor, string][] = [
      [ln.call(x), 'fwd.layernorm.y'],
      [rms.call(x), 'fwd.rmsnorm.y'],
      [new GELU().call(x), 'fwd.gelu.y'],
      [new GELU({ approximate: 'tanh' }).call(x), 'fwd.gelu_tanh.y'],
      [new SiLU().call(x), 'fwd.silu.y'],
    ];
    for (const [y, name] of outs) await close(y, name);
    tf.dispose(outs.map(([y]) => y));
    ln.dispose();
    rms.dispose();
  });

  it('cross-entropy with ignore_index -100, for every reduction', async () => {
    const logits = fx('loss.logits');
    const labels = fx('loss.labels');
    for (const reduction of ['mean', 'sum', 'none'] as const) {
      const l = crossEntropy(logits, labels, { reduction });
      await close(reduction === 'none' ? l : tf.reshape(l, [1]), `loss.${reduction}`);
      l.dispose();
    }
  });

  it('leaves no tensors behind in forward passes', () => {
    const lin = new Linear(16, 8);
    const conv = new Conv2d(4, 6, 3, { stride: 2, dilation: 2, groups: 2, padding: 1 });
    const before = tf.memory().numTensors;
    tf.dispose([lin.call(tf.ones([2, 16])), conv.call(tf.ones([1, 4, 9, 9]))]);
    // the two inputs above were created outside any scope: they are the only extra tensors left
    expect(tf.memory().numTensors).toBe(before + 2);
    lin.dispose();
    conv.dispose();
  });
});

await describeEachBackend('optimizers against torch', () => {
  afterAll(freeFixture);
  const run = async (label: string, make: (p: tf.Variable[]) => AdamW | SGD, tol: number) => {
    const w = tf.variable(tf.clone(fx('opt.w0')), true, `w_${label}_${Math.random()}`);
    const b = tf.variable(tf.clone(fx('opt.b0')), true, `b_${label}_${Math.random()}`);
    const opt = make([w, b]);
    const x = fx('opt.x');
    const y = fx('opt.y');
    for (let step = 0; step < 10; step++) {
      const { value, grads } = tf.variableGrads(
        () => tf.mean(tf.square(tf.sub(tf.add(tf.matMul(x, w, false, true), b), y))) as tf.Scalar,
        [w, b],
      );
      opt.step(grads);
      tf.dispose([value, ...Object.values(grads)]);
      expect(
        maxRelativeError(await w.data(), await fx(`opt.${label}.${step}.w`).data()),
        `${label} step ${step} w`,
      ).toBeLessThan(tol);
      expect(
        maxRelativeError(await b.data(), await fx(`opt.${label}.${step}.b`).data()),
        `${label} step ${step} b`,
      ).toBeLessThan(tol);
    }
    opt.dispose();
    tf.dispose([w, b]);
  };
  it('AdamW matches torch.optim.AdamW step for step (1e-6)', async () => {
    await run('adamw', (p) => new AdamW(p, { lr: 1e-2, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.1 }), 1e-6);
    await run('adamw_default', (p) => new AdamW(p), 1e-6);
  });
  it('SGD with momentum, Nesterov, dampening and weight decay matches torch.optim.SGD', async () => {
    await run('sgd_nesterov', (p) => new SGD(p, { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 0.01 }), 1e-6);
    await run('sgd_dampening', (p) => new SGD(p, { lr: 0.05, momentum: 0.8, dampening: 0.3 }), 1e-6);
  });
  it('clipGradNorm matches clip_grad_norm_', async () => {
    const grads = { a: tf.clone(fx('clip.a')), b: tf.clone(fx('clip.b')) };
    const { grads: clipped, totalNorm } = await clipGradNorm(grads, 1.5);
    expect(Math.abs(totalNorm - ((await fx('clip.total').data())[0] as number))).toBeLessThan(1e-5);
    await close(clipped.a as tf.Tensor, 'clip.a_clipped', 1e-6);
    await close(clipped.b as tf.Tensor, 'clip.b_clipped', 1e-6);
    tf.dispose(Object.values(clipped));
  });
  it('clipGradNorm over many gradients (summed in groups of 7, for WebGPU) is the global norm', async () => {
    const grads: Record<string, tf.Tensor> = {};
    let squares = 0;
    for (let i = 0; i < 50; i++) {
      grads[`g${i}`] = tf.tensor1d([i + 1, -(i % 3)]);
      squares += (i + 1) ** 2 + (i % 3) ** 2;
    }
    const { grads: clipped, totalNorm } = await clipGradNorm(grads, 1);
    expect(totalNorm).toBeCloseTo(Math.sqrt(squares), 2);
    expect((await (clipped.g49 as tf.Tensor).data())[0]).toBeCloseTo(50 / Math.sqrt(squares), 6);
    tf.dispose(Object.values(clipped));
  });

  it('clipGradNorm takes any number of gradients (WebGPU binds at most 8 buffers per shader)', async () => {
    // 84 gradients, as LoRA on every projection of a 6-layer Llama: one addN of them all fails on webgpu
    const values = Array.from({ length: 84 }, (_, i) => [((i % 9) - 4) * 0.25, 0.5 + i / 100, -0.125]);
    const grads = Object.fromEntries(values.map((v, i) => [`p${i}`, tf.tensor1d(v)]));
    const want = Math.sqrt(values.flat().reduce((s, x) => s + x * x, 0));
    const { grads: clipped, totalNorm } = await clipGradNorm(grads, 1);
    expect(Math.abs(totalNorm - want) / want).toBeLessThan(1e-6);
    const scaled = await (clipped.p83 as tf.Tensor).data();
    expect(Math.abs((scaled[1] as number) - (values[83]?.[1] as number) / (want + 1e-6))).toBeLessThan(1e-6);
    tf.dispose(Object.values(clipped));
  });
});

describe('names and schedules', () => {
  class Block extends Module {
    attn = this.registerModule(
      'attn',
      new ModuleDict({ q_proj: new Linear(4, 4, { bias: false }), o_proj: new Linear(4, 4) }),
    );
    norm = this.registerModule('norm', new LayerNorm(4));
    forward(): never {
      throw new Error('unused');
    }
  }
  class Net extends Module {
    embed = this.registerModule('embed', new Embedding(5, 4));
    layers = this.registerModule('layers', new ModuleList([new Block(), new Block()]));
    head = this.registerModule('head', new Sequential(new Linear(4, 8), new SiLU(), new Linear(8, 2)));
    forward(): never {
      throw new Error('unused');
    }
  }

  it("gives state-dict keys and module paths in PyTorch's order and spelling", () => {
    const net = new Net();
    expect(Object.keys(net.stateDict())).toEqual(meta.state_dict_names);
    expect([...net.namedModules()].map(([n]) => n)).toEqual(meta.named_modules);
    net.dispose();
  });

  it("matches transformers' warm-up schedules", () => {
    const ours = {
      linear: linearWarmupSchedule({ warmupSteps: 3, totalSteps: 10 }),
      cosine: cosineWarmupSchedule({ warmupSteps: 3, totalSteps: 10 }),
      constant: constantWarmupSchedule({ warmupSteps: 3 }),
    };
    for (const [label, f] of Object.entries(ours)) {
      const want = meta.schedules[label] as number[];
      want.forEach((v, step) => {
        expect(f(step)).toBeCloseTo(v, 12);
      });
    }
  });
});
