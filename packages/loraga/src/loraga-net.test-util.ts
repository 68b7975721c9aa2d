import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import { Conv1d, Embedding, Linear, Module, TransposedLinear, crossEntropy, withoutInit } from '@lora/nn';

/** Where the PEFT fixtures of tools/oracle/loraga_fixtures.py live. */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

/** A fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/**
 * LoraGaNet of tools/oracle/loraga_net.py: ids [B, T] → Embedding(20, 12) → Linear(12, 16) → tanh →
 * TransposedLinear (transformers' Conv1D, 24 out, 16 in) → tanh → Conv1d(24, 24, 1) over T → Linear(24, 20).
 */
export class LoraGaNet extends Module {
  embed = this.registerModule('embed', new Embedding(20, 12));
  q_proj = this.registerModule('q_proj', new Linear(12, 16));
  c_fc = this.registerModule('c_fc', new TransposedLinear(24, 16));
  conv = this.registerModule('conv', new Conv1d(24, 24, 1));
  head = this.registerModule('head', new Linear(24, 20));
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = tf.tanh(this.q_proj.call(this.embed.call(ids)) as tf.Tensor);
      h = tf.tanh(this.c_fc.call(h) as tf.Tensor);
      h = tf.transpose(this.conv.call(tf.transpose(h, [0, 2, 1])) as tf.Tensor, [0, 2, 1]);
      return this.head.call(h) as tf.Tensor;
    });
  }
}

/** TwiceNet of loraga_net.py: one Linear applied twice per forward. */
export class TwiceNet extends Module {
  lin = this.registerModule('lin', new Linear(6, 6));
  out = this.registerModule('out', new Linear(6, 3));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.out.call(tf.tanh(this.lin.call(tf.tanh(this.lin.call(x) as tf.Tensor)) as tf.Tensor)));
  }
}

/** A model built without random init, holding a fixture file's weights. */
export function withWeights<M extends Module>(build: () => M, file: string): M {
  const net = withoutInit(build);
  const tensors = readFixture(file);
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net;
}

/** Mean cross-entropy over every position (lm_loss of loraga_net.py). */
export function lmLoss(logits: tf.Tensor, labels: tf.Tensor): tf.Scalar {
  const c = logits.shape.at(-1) as number;
  return crossEntropy(tf.reshape(logits, [-1, c]), tf.reshape(labels, [-1])) as tf.Scalar;
}

/** The fixture's three batches as a trainStep. */
export function fixtureTrainStep(net: LoraGaNet, expected: Record<string, tf.Tensor>) {
  return async (backward: (loss: () => tf.Scalar) => Promise<number>) => {
    for (let i = 0; i < 3; i++)
      await backward(() => lmLoss(net.call(expected[`batch.${i}.ids`]), expected[`batch.${i}.labels`] as tf.Tensor));
  };
}
