import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { Linear, withoutInit } from '@lora/nn';
import { Net, readFixture as read } from '../fixture-nets.test-util';
import { type LoraLinear, getPeftModel } from '@lora/core';

beforeAll(async () => {
  await initBackend('cpu');
});

for (const init of ['pissa', 'olora'] as const) {
  it(`${init}: residual base weights and B·A as PEFT's (through an ${init === 'pissa' ? 'SVD' : 'QR'}), the model unchanged at init`, async () => {
    const net = withoutInit(() => new Net());
    const base = read('base.safetensors');
    net.loadStateDict(base);
    const want = read('init-expected.safetensors');
    const expected = read('expected.safetensors');
    const peft = getPeftModel(net, { r: 3, loraAlpha: 6, targetModules: ['q_proj', 'mlp'], initLoraWeights: init });
    for (const path of ['layers.0.q_proj', 'layers.1.mlp']) {
      const layer = peft.model.getSubmodule(path) as LoraLinear;
      expect(
        maxRelativeError(await layer.baseLayer.weight.data(), await want[`${init}.${path}.residual`]!.data()),
        `${path} residual`,
      ).toBeLessThan(1e-4);
      const ba = tf.matMul(layer.factorB('default'), layer.factorA('default'));
      expect(maxRelativeError(await ba.data(), await want[`${init}.${path}.ba`]!.data()), `${path} B·A`).toBeLessThan(
        1e-4,
      );
      ba.dispose();
    }
    const y = peft.call(expected.x) as tf.Tensor;
    expect(maxRelativeError(await y.data(), await want[`${init}.out`]!.data())).toBeLessThan(1e-5);
    expect(maxRelativeError(await y.data(), await expected.base_out!.data())).toBeLessThan(1e-5);
    tf.dispose([y, ...Object.values(base), ...Object.values(want), ...Object.values(expected)]);
    peft.dispose();
  });
}

it('pissa_niter_K: a randomized SVD of W that still leaves the model unchanged at init', async () => {
  const net = withoutInit(() => new Net());
  const base = read('base.safetensors');
  net.loadStateDict(base);
  const expected = read('expected.safetensors');
  const peft = getPeftModel(net, { r: 3, loraAlpha: 6, targetModules: ['mlp'], initLoraWeights: 'pissa_niter_4' });
  const y = peft.call(expected.x) as tf.Tensor;
  expect(maxRelativeError(await y.data(), await expected.base_out!.data())).toBeLessThan(1e-5);
  expect(() =>
    getPeftModel(
      withoutInit(() => new Net()),
      { r: 3, targetModules: ['mlp'], initLoraWeights: 'pissa_niter_x' as 'pissa' },
    ),
  ).toThrow("Unknown initialization init_lora_weights='pissa_niter_x'");
  tf.dispose([y, ...Object.values(base), ...Object.values(expected)]);
  peft.dispose();
});

it("'loftq', 'eva' and 'lora_ga' come from their packages: a clear error until registered, then the registered init runs", async () => {
  const { registerLoraInit } = await import('@lora/core');
  const make = (init: 'eva' | 'loftq' | 'lora_ga') =>
    getPeftModel(
      withoutInit(() => new Net()),
      // PEFT requires loftq_config with init_lora_weights='loftq'
      { r: 2, targetModules: ['mlp'], initLoraWeights: init, loftqConfig: init === 'loftq' ? {} : null },
    );
  expect(() => make('loftq')).toThrow(
    "init_lora_weights='loftq' is provided by @lora/loftq: npm install @lora/loftq and import it before creating the LoRA model",
  );
  expect(() => make('lora_ga')).toThrow(/provided by @lora\/loraga/);
  const net = withoutInit(() => new Net());
  const before = tf.memory().numTensors;
  expect(() => getPeftModel(net, { r: 2, targetModules: ['mlp'], initLoraWeights: 'eva' })).toThrow(
    /provided by @lora\/eva/,
  );
  expect(tf.memory().numTensors).toBe(before);
  expect(net.getSubmodule('layers.0.mlp')).toBeInstanceOf(Linear); // nothing was wrapped
  net.dispose();
  const paths: string[] = [];
  registerLoraInit('eva', (ctx) => {
    paths.push(ctx.path);
    ctx.loraA.assign(tf.onesLike(ctx.loraA));
    ctx.loraB.assign(tf.zerosLike(ctx.loraB));
  });
  const peft = make('eva');
  // the initialiser learns where each layer sits (EVA keys its statistics by module path)
  expect(paths).toEqual(['layers.0.mlp', 'layers.1.mlp']);
  const layer = peft.model.getSubmodule('layers.0.mlp') as LoraLinear;
  expect(Array.from(await layer.factorA('default').data()).every((v) => v === 1)).toBe(true);
  peft.dispose();
});

it('orthogonal: A and B as PEFT draws them after the same seed, with B·A = 0', async () => {
  const { manualSeed } = await import('@lora/nn');
  const want = read('orthogonal-expected.safetensors');
  manualSeed(70);
  const net = withoutInit(() => new Net());
  const peft = getPeftModel(net, { r: 4, loraAlpha: 8, targetModules: ['q_proj'], initLoraWeights: 'orthogonal' });
  expect(
    [...peft.namedParameters()]
      .map(([n]) => n)
      .filter((n) => n.includes('lora_'))
      .sort(),
  ).toEqual(Object.keys(want).sort());
  for (const [n, p] of peft.namedParameters()) {
    if (n.includes('lora_')) expect(maxRelativeError(await p.data(), await want[n]!.data()), n).toBeLessThan(1e-5);
  }
  const layer = peft.model.getSubmodule('layers.0.q_proj') as LoraLinear;
  const ba = tf.matMul(layer.factorB('default'), layer.factorA('default'));
  expect(Math.max(...Array.from(await ba.data(), Math.abs))).toBeLessThan(1e-6);
  expect(() =>
    getPeftModel(
      withoutInit(() => new Net()),
      { r: 3, targetModules: ['q_proj'], initLoraWeights: 'orthogonal' },
    ),
  ).toThrow('Orthogonal initialization requires the LoRA rank to be even, got 3 instead.');
  tf.dispose([ba, ...Object.values(want)]);
  peft.dispose();
});
