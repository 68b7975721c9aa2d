import * as tf from '@tensorflow/tfjs-core';
import { IncrementalPCA } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { expect, it } from 'vitest';
import { IpcaUpdater, LayerPca } from './incremental-pca';

/** n×d rows with a decaying spectrum (well separated leading directions), different per seed. */
function batch(n: number, d: number, seed: number): Float32Array {
  const g = new Generator(seed);
  const z = g.fillNormal(new Float32Array(n * d));
  const mix = new Generator(99).fillNormal(new Float32Array(d * d)); // the same directions in every batch
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++)
    for (let c = 0; c < d; c++) {
      const scale = 12 / (1 + c) ** 1.2;
      const v = (z[i * d + c] as number) * scale;
      for (let j = 0; j < d; j++)
        out[i * d + j] = (out[i * d + j] as number) + (v * (mix[c * d + j] as number)) / Math.sqrt(d);
    }
  for (let i = 0; i < n * d; i++) out[i] = (out[i] as number) + 0.3; // a mean to remove
  return out;
}

function absCos(a: ArrayLike<number>, b: ArrayLike<number>, row: number, d: number): number {
  return Math.abs(cos(a, b, row, d));
}

function cos(a: ArrayLike<number>, b: ArrayLike<number>, row: number, d: number): number {
  let xy = 0;
  let xx = 0;
  let yy = 0;
  for (let j = 0; j < d; j++) {
    const x = a[row * d + j] as number;
    const y = b[row * d + j] as number;
    xy += x * y;
    xx += x * x;
    yy += y * y;
  }
  return xy / Math.sqrt(xx * yy);
}

await describeEachBackend(
  'IpcaUpdater (float32, stacked) against the float64 IncrementalPCA PEFT matches',
  (backend) => {
    for (const [label, n, d, k, onBackend] of [
      ['tall (rows ≥ features)', 50, 40, 6, false],
      ['wide (rows < features)', 30, 64, 6, false],
      ['exact (sketch spans the matrix)', 40, 10, 6, false],
      ['tall, q×q work on the backend', 50, 40, 6, true],
      ['wide, q×q work on the backend', 30, 64, 6, true],
    ] as const) {
      it(`${label}: components, singular values, explained variance and convergence over 4 batches`, async () => {
        // the backend path runs on cpu and webgpu (webgpu's default); the host path everywhere
        if (onBackend && !['cpu', 'webgpu'].includes(backend.name)) return;
        const before = tf.memory().numTensors;
        const updater = new IpcaUpdater({
          tau: 0.99,
          factorOnBackend: onBackend || (backend.name === 'webgpu' && n === 40),
        });
        // two layers fed the same batches go through one stacked update; a third gets other data
        const layers = [new LayerPca('x', k), new LayerPca('y', k), new LayerPca('z', k)];
        const refs = [0, 1, 2].map(() => new IncrementalPCA({ nComponents: k, lowRank: true, lowRankSeed: 42 }));
        const previous: (Float64Array | null)[] = [null, null, null];
        for (let step = 0; step < 4; step++) {
          const data = [batch(n, d, 10 + step), batch(n, d, 10 + step), batch(n, d, 50 + step)];
          const xs = data.map((v) => tf.tensor2d(v, [n, d]));
          await updater.update(layers.map((layer, i) => ({ layer, x: xs[i] as tf.Tensor2D })));
          // each layer keeps its components on the backend, the updater its sketches; nothing else stays
          const sketches = 2 * k >= Math.min(n, d) ? 0 : step === 0 ? 1 : 2;
          expect(tf.memory().numTensors).toBe(before + 3 + 3 + sketches);
          for (const [i, ref] of refs.entries()) await ref.partialFit(xs[i] as tf.Tensor2D);
          tf.dispose(xs);
          for (const [i, layer] of layers.entries()) {
            await layer.componentRows();
            const ref = refs[i] as IncrementalPCA;
            const comps = ref.components?.data as Float64Array;
            for (let r = 0; r < k; r++)
              expect(absCos(layer.components as Float32Array, comps, r, d)).toBeGreaterThan(0.9999);
            // signs: svd_flip's rule gives the same signs, not just the same directions
            for (let j = 0; j < k * d; j++)
              expect(Math.abs((layer.components?.[j] as number) - (comps[j] as number))).toBeLessThan(2e-3);
            for (let r = 0; r < k; r++) {
              expect((layer.singularValues?.[r] as number) / (ref.singularValues?.[r] as number)).toBeCloseTo(1, 4);
              expect(
                (layer.explainedVarianceRatio?.[r] as number) / (ref.explainedVarianceRatio?.[r] as number),
              ).toBeCloseTo(1, 4);
            }
            for (let j = 0; j < d; j++) {
              expect(layer.mean?.[j]).toBeCloseTo(ref.mean?.[j] as number, 4);
              expect(layer.variance?.[j]).toBeCloseTo(ref.var?.[j] as number, 3);
            }
            expect(layer.nSeen).toBe(ref.nSamplesSeen);
            // PEFT's SVDHook: converged where the cosine with the previous batch's component is at least tau
            const prev = previous[i];
            const expected = Array.from({ length: k }, (_, r) => (prev ? cos(comps, prev, r, d) >= 0.99 : false));
            expect(layer.converged).toEqual(expected);
            previous[i] = Float64Array.from(comps);
          }
          // the two stacked copies see the same data; the tensorflow backend's batched products may round them differently
          expect(
            maxRelativeError(layers[0]?.components as Float32Array, layers[1]?.components as Float32Array),
          ).toBeLessThan(1e-5);
        }
        for (const l of layers) l.dispose();
        updater.dispose();
        expect(tf.memory().numTensors).toBe(before);
      });
    }

    it("'float64' runs linalg's IncrementalPCA itself: PEFT's arithmetic", async () => {
      const updater = new IpcaUpdater({ tau: 0.99, precision: 'float64' });
      const layer = new LayerPca('x', 5);
      const ref = new IncrementalPCA({ nComponents: 5, lowRank: true, lowRankSeed: 42 });
      for (let step = 0; step < 3; step++) {
        const x = tf.tensor2d(batch(30, 20, step), [30, 20]);
        await updater.update([{ layer, x }]);
        await ref.partialFit(x);
        x.dispose();
      }
      expect(Array.from(layer.components as Float64Array)).toEqual(Array.from(ref.components?.data as Float64Array));
      expect(layer.updates).toBe(3);
      layer.dispose();
      updater.dispose();
    });
  },
);
