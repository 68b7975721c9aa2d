import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { Generator } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { type CombinationType, mergeTaskTensors } from './adapter-combination';

// the tensor-op merge (what webgpu runs) against the float32-array one (what the CPU backends run), which
// large-combination.test.ts and combine-adapters.test.ts hold to PEFT's results
await describeEachBackend('merging task tensors with tensor ops', () => {
  it('gives the host merge entry for entry: ties (both sign methods), magnitude_prune, dare, linear', async () => {
    const g = new Generator(11);
    const shape = [48, 40];
    const make = () => Float32Array.from(g.fillNormal(new Float32Array(48 * 40)), (v, i) => (i % 9 === 0 ? 0 : v));
    const values = [make(), make(), make()];
    const cases: [CombinationType, 'total' | 'frequency' | undefined][] = [
      ['ties', 'total'],
      ['ties', 'frequency'],
      ['dare_ties', 'total'],
      ['magnitude_prune', undefined],
      ['dare_linear', undefined],
      ['linear', undefined],
    ];
    for (const count of [1, 2, 3]) {
      const tensors = values.slice(0, count).map((v) => tf.tensor(v, shape));
      const weights = [0.7, -1.3, 0.4].slice(0, count);
      for (const [kind, majoritySignMethod] of cases) {
        const options = { density: 0.45, majoritySignMethod };
        const before = tf.memory().numTensors;
        const host = await mergeTaskTensors(tensors, weights, kind, options, new Generator(3), 'host');
        const backend = await mergeTaskTensors(tensors, weights, kind, options, new Generator(3), 'backend');
        expect(tf.memory().numTensors - before, `${kind} ${count}`).toBe(2);
        const want = Array.from(await host.data(), (v) => v + 0);
        const got = Array.from(await backend.data(), (v) => v + 0);
        // the host sums in float64 and rounds once, the tensors round each product and sum in float32; with
        // weights of both signs agreeing entries can cancel: compared relative to the largest entry
        expect(maxRelativeError(got, want), `${kind} ${majoritySignMethod} ${count}`).toBeLessThan(1e-6);
        // and the same entries zeroed (pruned, or no adapter agreeing with the elected sign)
        const zeroedApart = got.filter((v, i) => (v === 0) !== (want[i] === 0)).length;
        expect(zeroedApart, `${kind} ${majoritySignMethod} ${count}`).toBe(0);
        tf.dispose([host, backend]);
      }
      tf.dispose(tensors);
    }
  });
});
