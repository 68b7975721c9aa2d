import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { fusedActive } from '@lora/kernels';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import {
  AdamW,
  Linear,
  Module,
  SGD,
  type TrainLogs,
  checkpointCallback,
  crossEntropy,
  gradientsFor,
  manualSeed,
  train,
} from '@lora/nn';

/** A frozen base Linear plus a trainable low-rank pair: the shape of a LoRA layer. */
class LowRank extends Module {
  base = this.registerModule('base', new Linear(8, 3));
  a = this.registerModule('a', new Linear(8, 2, { bias: false }));
  b = this.registerModule('b', new Linear(2, 3, { bias: false }));
  constructor() {
    super();
    this.base.requiresGrad(false);
  }
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.add(this.base.call(x), this.b.call(this.a.call(x))));
  }
}

function data(n: number, seed: number) {
  const g = new Generator(seed);
  return Array.from({ length: n }, () => {
    const x = g.rand([4, 8], -1, 1);
    const y = tf.tensor1d(
      Array.from({ length: 4 }, () => Math.floor(g.nextFloat24() * 3)),
      'int32',
    );
    return { x, y };
  });
}
const snapshot = async (m: Module) =>
  Object.fromEntries(
    await Promise.all([...m.namedParameters()].map(async ([n, p]) => [n, Array.from(await p.data())] as const)),
  );

await describeEachBackend('train', () => {
  it('lowers the loss, changes only trainable parameters, and frees every tensor it makes', async () => {
    manualSeed(0);
    const model = new LowRank();
    const batches = data(6, 1);
    const before = await snapshot(model);
    const opt = new AdamW(model.trainableParameters(), { lr: 0.05, weightDecay: 0 });
    const tensorsBefore = tf.memory().numTensors;
    const steps: TrainLogs[] = [];
    const events: string[] = [];
    const result = await train(model, batches, {
      optimizer: opt,
      loss: (b) => crossEntropy(model.call(b.x), b.y) as tf.Scalar,
      epochs: 4,
      progressBar: false,
      onProgress: (l) => steps.push(l),
      callbacks: {
        onTrainBegin: () => void events.push('begin'),
        onEpochEnd: (e) => void events.push(`epoch${e}`),
        onTrainEnd: () => void events.push('end'),
      },
    });
    // optimizer state is the only thing allowed to stay: m and v per trainable tensor, packed in one
    // tensor where @lora/kernels' fused AdamW runs (webgpu)
    const perParameter = fusedActive() ? 1 : 2;
    expect(tf.memory().numTensors).toBe(tensorsBefore + perParameter * model.trainableParameters().length);
    expect(result).toMatchObject({ steps: 24, epochs: 4, stopped: 'completed' });
    expect(events).toEqual(['begin', 'epoch0', 'epoch1', 'epoch2', 'epoch3', 'end']);
    expect(steps.map((s) => s.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    expect(steps[0]?.totalSteps).toBe(24);
    const first = result.losses.slice(0, 6).reduce((a, b) => a + b) / 6;
    const last = result.losses.slice(-6).reduce((a, b) => a + b) / 6;
    expect(last).toBeLessThan(first * 0.9);
    const after = await snapshot(model);
    for (const name of ['base.weight', 'base.bias']) expect(after[name], name).toEqual(before[name]);
    for (const name of ['a.weight', 'b.weight']) expect(after[name], name).not.toEqual(before[name]);
    opt.dispose();
    model.dispose();
    tf.dispose(batches.flatMap((b) => [b.x, b.y]));
  });

  it('accumulating two micro-batches equals one step on both (SGD, mean loss)', async () => {
    const run = async (accumulate: number) => {
      manualSeed(3);
      const model = new LowRank();
      const [p, q] = data(2, 5);
      const batches = accumulate === 2 ? [p!, q!] : [{ x: tf.concat([p!.x, q!.x]), y: tf.concat([p!.y, q!.y]) }];
      const opt = new SGD(model.trainableParameters(), { lr: 0.5 });
      await train(model, batches, {
        optimizer: opt,
        loss: (b) => crossEntropy(model.call(b.x), b.y) as tf.Scalar,
        gradientAccumulationSteps: accumulate,
        progressBar: false,
      });
      const out = await snapshot(model);
      model.dispose();
      tf.dispose([p!.x, p!.y, q!.x, q!.y, ...(accumulate === 2 ? [] : [batches[0]!.x, batches[0]!.y])]);
      return out;
    };
    const one = await run(1);
    const two = await run(2);
    for (const k of Object.keys(one)) {
      one[k]!.forEach((v, i) => {
        expect(Math.abs(v - two[k]![i]!)).toBeLessThan(1e-6);
      });
    }
  });

  it('stops at maxSteps, and between micro-batches when aborted', async () => {
    manualSeed(0);
    const model = new LowRank();
    const batches = data(8, 2);
    const opt = new SGD(model.trainableParameters(), { lr: 0.1 });
    const loss = (b: { x: tf.Tensor; y: tf.Tensor }) => crossEntropy(model.call(b.x), b.y) as tf.Scalar;
    expect(await train(model, batches, { optimizer: opt, loss, maxSteps: 3, progressBar: false })).toMatchObject({
      steps: 3,
      stopped: 'maxSteps',
    });
    const controller = new AbortController();
    const r = await train(model, batches, {
      optimizer: opt,
      loss,
      progressBar: false,
      callbacks: { onStepEnd: (s) => (s === 2 ? controller.abort() : undefined) },
      signal: controller.signal,
    });
    expect(r).toMatchObject({ steps: 2, stopped: 'aborted' });
    const gen = (function* () {
      yield* batches;
    })();
    await expect(train(model, gen, { optimizer: opt, loss, epochs: 2, progressBar: false })).rejects.toThrow(
      /one-pass iterator/,
    );
    model.dispose();
    tf.dispose(batches.flatMap((b) => [b.x, b.y]));
  });

  it('saves checkpoints of the trainable state every n steps and at the end', async () => {
    manualSeed(0);
    const model = new LowRank();
    const batches = data(5, 4);
    const saved: [number, string[]][] = [];
    const opt = new SGD(model.trainableParameters(), { lr: 0.1 });
    await train(model, batches, {
      optimizer: opt,
      loss: (b) => crossEntropy(model.call(b.x), b.y) as tf.Scalar,
      progressBar: false,
      callbacks: checkpointCallback(model, {
        everySteps: 2,
        save: (step, sd) => void saved.push([step, Object.keys(sd)]),
      }),
    });
    expect(saved).toEqual([
      [2, ['a.weight', 'b.weight']],
      [4, ['a.weight', 'b.weight']],
      [5, ['a.weight', 'b.weight']],
    ]);
    model.dispose();
    tf.dispose(batches.flatMap((b) => [b.x, b.y]));
  });

  it('gradientsFor gives gradients of frozen parameters and leaves them frozen', () => {
    manualSeed(0);
    const model = new LowRank();
    const [b] = data(1, 9);
    const w = model.base.weight;
    expect(w.trainable).toBe(false);
    const { value, grads } = gradientsFor([w], () => crossEntropy(model.call(b!.x), b!.y) as tf.Scalar);
    expect(Object.keys(grads)).toEqual([w.name]);
    expect(grads[w.name]!.shape).toEqual([3, 8]);
    expect(w.trainable).toBe(false);
    tf.dispose([value, ...Object.values(grads), b!.x, b!.y]);
    model.dispose();
  });
});
