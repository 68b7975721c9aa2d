import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { parseSafetensors } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { scaledDotProductAttention, variableGrads } from '@lora/nn';
import { LlamaForCausalLM, llamaKernels } from '@lora/models';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
const read = (name: string, file: string) =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIXTURES, name, file)))).tensors;

/** Gradients of every parameter by state-dict name, and the loss, on the case's inputs. */
async function gradients(
  model: LlamaForCausalLM,
  inputs: Record<string, tf.Tensor>,
  returnLogits: boolean,
): Promise<{ loss: number; grads: Record<string, Float32Array> }> {
  const names = new Map([...model.namedParameters()].map(([n, p]) => [p.name, n]));
  const mask = (await inputs.attention_mask!.array()) as number[][];
  const { value, grads } = variableGrads(() => {
    const out = model.forward(inputs.input_ids as tf.Tensor2D, {
      attentionMask: mask,
      labels: inputs.labels as tf.Tensor2D,
      returnLogits,
    }) as { logits?: tf.Tensor; loss: tf.Scalar };
    out.logits?.dispose();
    return out.loss;
  }, model.parameters());
  const out: Record<string, Float32Array> = {};
  for (const [v, g] of Object.entries(grads)) out[names.get(v) as string] = (await g.data()) as Float32Array;
  const loss = (await value.data())[0] as number;
  tf.dispose([value, ...Object.values(grads)]);
  return { loss, grads: out };
}

await describeEachBackend('Llama backward pass against transformers (eager attention)', () => {
  for (const name of ['llama-gqa', 'llama-mha-tied']) {
    it(`${name}: every parameter's gradient (1e-5), with and without logits, checkpointing and query blocks`, async () => {
      const before = tf.memory().numTensors;
      const want = read(name, 'grads.safetensors');
      const inputs = read(name, 'expected.safetensors');
      const model = await LlamaForCausalLM.fromPretrained(join(FIXTURES, name));
      model.train();
      const wantLoss = (await want.loss!.data())[0] as number;
      const check = async (label: string, got: { loss: number; grads: Record<string, Float32Array> }) => {
        expect(Math.abs(got.loss - wantLoss) / wantLoss, `${label} loss`).toBeLessThan(1e-6);
        // tied embeddings: transformers reports one gradient for the shared weight, under the embedding's name
        const names = Object.keys(want).filter((k) => k !== 'loss');
        expect(Object.keys(got.grads).sort(), label).toEqual(names.sort());
        for (const k of names)
          expect(maxRelativeError(got.grads[k]!, await want[k]!.data()), `${label} ${k}`).toBeLessThan(1e-5);
      };
      await check('logits', await gradients(model, inputs, true));
      await check('fused head', await gradients(model, inputs, false));
      model.gradientCheckpointingEnable();
      await check('checkpointing', await gradients(model, inputs, false));
      model.gradientCheckpointingDisable();
      const attention = llamaKernels.attention;
      try {
        // 9 positions in blocks of 4, 4 and 1: the blocked path, masks and key ranges
        llamaKernels.attention = (q, k, v, o) => scaledDotProductAttention(q, k, v, { ...o, blockSize: 4 });
        await check('blocks of 4', await gradients(model, inputs, false));
      } finally {
        llamaKernels.attention = attention;
      }
      model.dispose();
      tf.dispose([...Object.values(want), ...Object.values(inputs)]);
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('gradient checkpointing replays dropout: the same gradients as without it', async () => {
    const { Dropout, manualSeed } = await import('@lora/nn');
    const model = await LlamaForCausalLM.fromPretrained(join(FIXTURES, 'llama-gqa'));
    // a dropout drawing from the default generator inside each layer's MLP input
    for (const layer of model.model.layers) {
      const drop = new Dropout(0.3);
      const mlp = layer.mlp;
      const forward = mlp.forward.bind(mlp);
      mlp.forward = (x: tf.Tensor) => forward(drop.call(x));
    }
    model.train();
    const ids = tf.tensor2d([[3, 7, 11, 19, 23, 29]], [1, 6], 'int32');
    const run = async () => {
      manualSeed(5);
      const { value, grads } = variableGrads(
        () => model.forward(ids, { labels: ids, returnLogits: false }).loss,
        [model.model.layers.at(0).selfAttn.qProj.weight, model.model.layers.at(1).mlp.downProj.weight],
      );
      const out = await Promise.all(Object.values(grads).map((g) => g.data()));
      tf.dispose([value, ...Object.values(grads)]);
      return out;
    };
    const plain = await run();
    model.gradientCheckpointingEnable();
    const replayed = await run();
    for (let i = 0; i < plain.length; i++) expect(maxRelativeError(replayed[i]!, plain[i]!)).toBeLessThan(1e-6);
    ids.dispose();
    model.dispose();
  });
});
