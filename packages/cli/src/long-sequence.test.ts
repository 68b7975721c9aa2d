// A report said wasm fails with "memory access out of bounds" once an input is longer than the model's
// max_position_embeddings (fortune-llama: 256), in training or generation. These run exactly that on
// wasm: generation past the limit, LoRA training steps on 300 and 600 tokens with the fused
// loss and with logits, with gradient checkpointing, and over the 16-bit storage. They pass: the
// report did not reproduce (see issue 12's report); they stay as the regression test.
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel } from '@lora/core';
import { LlamaForCausalLM } from '@lora/models';
import { AdamW, manualSeed } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import { beforeAll, describe, expect, it } from 'vitest';

const MODEL = join(import.meta.dirname, '..', '..', '..', 'examples', 'fortune-llama', 'model');

function ids(t: number, seed: number): tf.Tensor2D {
  return tf.tensor2d([Array.from({ length: t }, (_, i) => (i * 7919 + seed * 104729) % 2048)], [1, t], 'int32');
}

beforeAll(async () => {
  await initBackend('wasm');
});

describe('wasm: inputs longer than max_position_embeddings (fortune-llama: 256)', () => {
  for (const weightStorage of ['float32', 'checkpoint'] as const) {
    it(`${weightStorage}: generate continues past 256 positions`, async () => {
      const model = await LlamaForCausalLM.fromPretrained(MODEL, { weightStorage });
      expect(model.config.maxPositionEmbeddings).toBe(256);
      const prompt = Array.from({ length: 250 }, (_, i) => (i * 31 + 5) % 2048);
      const before = tf.memory().numTensors;
      // eosTokenId -1: never stops early, so that the cache grows to 270 positions
      const out = await model.generate([prompt], { maxNewTokens: 20, eosTokenId: -1 });
      expect(out[0]?.length).toBe(270);
      expect(out[0]?.every((t) => Number.isInteger(t) && t >= 0 && t < 2048)).toBe(true);
      model.dispose();
      expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    }, 120_000);

    const cases =
      weightStorage === 'float32'
        ? [
            [300, false],
            [600, false],
            [600, true],
          ]
        : [[300, false]];
    for (const [t, checkpointing] of cases as [number, boolean][]) {
      it(`${weightStorage}: a LoRA training step on ${t} tokens${checkpointing ? ' with gradient checkpointing' : ''}, fused loss and logits`, async () => {
        const model = await LlamaForCausalLM.fromPretrained(MODEL, { weightStorage });
        if (checkpointing) model.gradientCheckpointingEnable();
        manualSeed(0);
        const peft = getPeftModel(model, { r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'] });
        peft.train();
        const params = [...peft.namedParameters()].filter(([, p]) => p.trainable).map(([, p]) => p);
        const opt = new AdamW(params, { lr: 1e-3 });
        const x = ids(t, 1);
        for (const returnLogits of [false, true]) {
          const { value, grads } = tf.variableGrads(
            () => (peft.forward(x, { labels: x, returnLogits }) as { loss: tf.Scalar }).loss,
          );
          const loss = (await value.data())[0] as number;
          expect(Number.isFinite(loss)).toBe(true);
          expect(loss).toBeGreaterThan(0);
          opt.step(grads);
          tf.dispose([value, ...Object.values(grads)]);
        }
        x.dispose();
        opt.dispose();
        peft.dispose();
      }, 300_000);
    }
  }

  it('float32: a padded batch of two (300 and 180 tokens, attention mask) trains and generates', async () => {
    const model = await LlamaForCausalLM.fromPretrained(MODEL);
    manualSeed(0);
    const peft = getPeftModel(model, { r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'] });
    const t = 300;
    const row = (n: number, seed: number) =>
      Array.from({ length: t }, (_, i) => (i < t - n ? 0 : (i * 7919 + seed * 104729) % 2048)); // left padding
    const x = tf.tensor2d([row(300, 1), row(180, 2)], [2, t], 'int32');
    const mask = tf.tensor2d(
      [Array(t).fill(1), Array.from({ length: t }, (_, i) => (i < t - 180 ? 0 : 1))],
      [2, t],
      'int32',
    );
    const labels = tf.tidy(() => tf.where(tf.equal(mask, 0), tf.fill([2, t], -100, 'int32'), x)) as tf.Tensor2D;
    const { value, grads } = tf.variableGrads(
      () => (peft.forward(x, { labels, attentionMask: mask, returnLogits: false }) as { loss: tf.Scalar }).loss,
    );
    expect(Number.isFinite((await value.data())[0] as number)).toBe(true);
    tf.dispose([value, ...Object.values(grads), x, mask, labels]);
    peft.eval();
    const out = await model.generate([row(260, 3).slice(0, 260)], { maxNewTokens: 8, eosTokenId: -1 });
    expect(out[0]?.length).toBe(268);
    peft.dispose();
  }, 300_000);
});
