import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend } from '@lora/tensor/testing';
import { Embedding } from '@lora/nn';

await describeEachBackend('Embedding gradient', () => {
  it('sums the gradient of repeated ids into their rows (on every backend, wasm included)', async () => {
    const emb = new Embedding(5, 3);
    const ids = tf.tensor2d(
      [
        [1, 3, 1],
        [4, 1, 0],
      ],
      [2, 3],
      'int32',
    );
    const weights = tf.tensor3d(
      Array.from({ length: 18 }, (_, i) => i + 1),
      [2, 3, 3],
    );
    const before = tf.memory().numTensors;
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.mul(emb.call(ids) as tf.Tensor, weights)) as tf.Scalar,
      [emb.weight],
    );
    const g = (await grads[emb.weight.name]!.array()) as number[][];
    // row r gets the sum of the multipliers at every position whose id is r
    const w = (await weights.array()) as number[][][];
    const want = Array.from({ length: 5 }, () => [0, 0, 0]);
    const idv = (await ids.array()) as number[][];
    for (const [b, row] of idv.entries()) {
      for (const [t, id] of row.entries()) {
        for (const [d, v] of w[b]![t]!.entries()) want[id]![d]! += v;
      }
    }
    expect(g).toEqual(want);
    tf.dispose([value, ...Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([ids, weights]);
    emb.dispose();
  });
});
