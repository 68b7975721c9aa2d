import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { type WeightedAdapterOptions, combineAdapters } from '@lora/core';
import { readAdapterFiles } from '../fixture-nets.test-util';

// tools/oracle/combine_large_fixtures.py: ΔW of 256×192 and 160×300, large enough for the float32 backend
// path (the pruned types decompose ΔW to its top svdRank only, svd through the adapters' factors)
const COMBOS: [string, WeightedAdapterOptions][] = [
  ['ties_svd', { combinationType: 'ties_svd', density: 0.5, svdRank: 8 }],
  ['magnitude_prune_svd', { combinationType: 'magnitude_prune_svd', density: 0.3, svdRank: 6 }],
  [
    'ties_svd_clamp',
    { combinationType: 'ties_svd', density: 0.6, svdRank: 8, svdClamp: 0.95, majoritySignMethod: 'frequency' },
  ],
  ['svd', { combinationType: 'svd', svdRank: 12 }],
];

async function product(tensors: Record<string, tf.Tensor>, path: string): Promise<Float32Array> {
  const a = tensors[`base_model.model.${path}.lora_A.weight`] as tf.Tensor2D;
  const b = tensors[`base_model.model.${path}.lora_B.weight`] as tf.Tensor2D;
  const p = tf.matMul(b, a);
  const v = (await p.data()) as Float32Array;
  p.dispose();
  return v;
}

await describeEachBackend('combining adapters of large modules', () => {
  it("gives PEFT's combined B·A within 1e-5 on every svd type, decomposing only the top of each ΔW", async () => {
    const a = readAdapterFiles('combine-large-a');
    const b = readAdapterFiles('combine-large-b');
    for (const [label, options] of COMBOS) {
      const before = tf.memory().numTensors;
      const mix = await combineAdapters([a, b], [0.7, 1.3], options);
      expect(tf.memory().numTensors - before, label).toBe(4);
      const peft = readAdapterFiles(`combine-large-${label}`);
      expect(mix.config.r, label).toBe(peft.config.r);
      for (const path of ['up', 'down']) {
        const err = maxRelativeError(await product(mix.tensors, path), await product(peft.tensors, path));
        expect(err, `${label} ${path}`).toBeLessThan(1e-5);
      }
      tf.dispose([...Object.values(mix.tensors), ...Object.values(peft.tensors)]);
    }
    tf.dispose([...Object.values(a.tensors), ...Object.values(b.tensors)]);
  });

  it('stops on an aborted signal with nothing left behind', async () => {
    const a = readAdapterFiles('combine-large-a');
    const b = readAdapterFiles('combine-large-b');
    const before = tf.memory().numTensors;
    const controller = new AbortController();
    controller.abort(new Error('cancelled'));
    await expect(
      combineAdapters([a, b], [1, 1], { combinationType: 'ties_svd', density: 0.5, signal: controller.signal }),
    ).rejects.toThrow('cancelled');
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([...Object.values(a.tensors), ...Object.values(b.tensors)]);
  });
});
