import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { type PeftModel, getDeltaWeight, loadAdapter } from '@lora/core';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { FIX, IntruderGpt, IntruderNet, baseOf, optionsOf, readFixture, records } from './intruder-nets.test-util';
import { reduceIntruderDimension } from './reduce-intruder-dimension';
import { join } from 'node:path';

beforeAll(async () => {
  await initBackend('cpu');
});

const NETS = { net: () => new IntruderNet(), gpt: () => new IntruderGpt() } as const;

async function peftModelOf(net: keyof typeof NETS): Promise<PeftModel> {
  const { model } = await loadAdapter(baseOf(NETS[net], net), join(FIX, net, 'adapter'));
  return model;
}

/** PEFT's intended new ΔW of a layer in the stored layout: s·B_new·A_new (what PEFT computed, whatever it then wrote where). */
function intended(expected: Record<string, tf.Tensor>, path: string, s: number): tf.Tensor {
  return tf.tidy(() =>
    tf.mul(tf.matMul(expected[`${path}.B_new`] as tf.Tensor2D, expected[`${path}.A_new`] as tf.Tensor2D), s),
  );
}

for (const net of ['net', 'gpt'] as const) {
  describe(`PEFT 0.21's reduce_intruder_dimension on the ${net} fixture`, () => {
    for (const [setting, record] of Object.entries(records(net))) {
      it(`${setting}: the same log lines, intruder counts and new ΔW (within 1e-4) on every layer`, async () => {
        const peft = await peftModelOf(net);
        const before = tf.memory().numTensors;
        const expected = readFixture(`${net}/${setting}.safetensors`);
        const lines: string[] = [];
        // the certificate tried first (on this cpu backend it is not by default; the exact call below is the default's path)
        const report = await reduceIntruderDimension(peft, {
          ...optionsOf(record),
          certify: true,
          loggingSink: (l) => lines.push(l),
        });
        expect(lines).toEqual(record.lines);
        expect(peft.activeAdapters).toEqual(record.active_adapters);
        expect(peft.adapters).toEqual(['default', 'intruder_reduced']);
        expect(Object.fromEntries(report.layers.map((l) => [l.path, l.intruders.length]))).toEqual(record.intruders);
        let worst = 0;
        for (const [path, layer] of peft.loraLayers()) {
          const s = record.scaling[path] as number;
          expect(layer.scaling.get('intruder_reduced')).toBe(s);
          const want = intended(expected, path, s);
          const got = getDeltaWeight(layer, 'intruder_reduced');
          expect(got.shape).toEqual(want.shape);
          const error = maxRelativeError(await got.data(), await want.data());
          worst = Math.max(worst, error);
          expect(error).toBeLessThan(1e-4);
          // PEFT's cosines, from its own SVDs of W and W + ΔW: ours equal them, or (a layer certified
          // without W's SVD) bound them from above, below the threshold
          const cos = (expected[`${path}.cos`] as tf.Tensor).arraySync() as number[];
          const layerReport = report.layers.find((l) => l.path === path);
          const mine = layerReport?.cosine as number[];
          if (layerReport?.cosineBound) {
            const epsilon = optionsOf(record).thresholdEpsilon ?? 0.5;
            mine.forEach((c, i) => {
              expect(c).toBeGreaterThanOrEqual((cos[i] as number) - 1e-6);
              expect(c).toBeLessThan(epsilon);
            });
          } else
            expect(
              maxRelativeError(Float32Array.from(mine), Float32Array.from(cos.slice(0, mine.length))),
            ).toBeLessThan(1e-4);
          tf.dispose([want, got]);
        }
        if (process.env.LORA_REPORT)
          console.log(
            net,
            setting,
            'max relative error of ΔW',
            worst.toExponential(2),
            report.layers.map((l) => `${l.path}: ${l.method}`).join(', '),
          );
        // with exactCosines, every cosine is PEFT's (W's SVD on every layer), and the counts stay
        peft.deleteAdapter('intruder_reduced');
        const exact = await reduceIntruderDimension(peft, {
          ...optionsOf(record),
          loggingSink: null,
          exactCosines: true,
        });
        expect(Object.fromEntries(exact.layers.map((l) => [l.path, l.intruders.length]))).toEqual(record.intruders);
        for (const l of exact.layers) {
          expect(l.cosineBound).toBe(false);
          const cos = (expected[`${l.path}.cos`] as tf.Tensor).arraySync() as number[];
          expect(
            maxRelativeError(Float32Array.from(l.cosine), Float32Array.from(cos.slice(0, l.cosine.length))),
          ).toBeLessThan(1e-4);
        }
        tf.dispose(Object.values(expected));
        // the new adapter's factors are all the call left behind
        peft.deleteAdapter('intruder_reduced');
        expect(tf.memory().numTensors).toBe(before);
        peft.dispose();
      });
    }
  });
}
