import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoraGaConfig, type TunerLayer, getDeltaWeight, getPeftModel, loraConfig } from '@lora/core';
import { matrix64, svd } from '@lora/linalg';
import { manualSeed } from '@lora/nn';
import { assertNoLeaks, initBackend } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import { estimateGradients, hasLoraGaGradient, preprocessLoraga } from '@lora/loraga';
import { LoraGaNet, TwiceNet, fixtureTrainStep, readFixture, withWeights } from './loraga-net.test-util';

const TARGETS = ['embed', 'q_proj', 'c_fc', 'conv', 'head'];
const GRAD_TARGETS = ['q_proj', 'c_fc', 'head'];
const DIRECTIONS = ['ArBr', 'A2rBr', 'ArB2r'] as const;
const SCALES = ['stable', 'weight_svd', 'gd_scale', 'unit'] as const;

let expected: Record<string, tf.Tensor>;
let base: Record<string, tf.Tensor>;
const values = (t: tf.Tensor | undefined) => {
  if (!t) throw new Error('missing fixture tensor');
  return t.dataSync() as Float32Array;
};

beforeAll(async () => {
  await initBackend('cpu');
  expected = readFixture('net-expected.safetensors');
  base = readFixture('net-base.safetensors');
});
afterAll(() => tf.dispose([...Object.values(expected), ...Object.values(base)]));

const config = (loraGaConfig: Partial<LoraGaConfig>) =>
  loraConfig({ r: 4, loraAlpha: 8, targetModules: TARGETS, initLoraWeights: 'lora_ga', loraGaConfig });

/** Singular values of a float32 [rows, cols] array, in float64. */
function singularValues(data: ArrayLike<number>, rows: number, cols: number): Float64Array {
  return svd(matrix64(rows, cols, Float64Array.from(data))).S;
}

const frob = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0));

describe('mean gradients (PEFT 0.21 estimate_gradients)', () => {
  for (const offload of [false, true]) {
    it(`every Linear / Conv1D target's mean gradient as PEFT's, Embedding and Conv1d left out${offload ? ' (offloaded)' : ''}`, async () => {
      const net = withWeights(() => new LoraGaNet(), 'net-base.safetensors').eval();
      const grads = await assertNoLeaks(
        () => estimateGradients(net, config({}), fixtureTrainStep(net, expected), { offload }),
        'estimateGradients',
      );
      expect([...grads.keys()]).toEqual(GRAD_TARGETS);
      for (const p of GRAD_TARGETS) {
        const g = grads.get(p) as tf.Tensor;
        expect(g.shape, p).toEqual((net.getSubmodule(p) as unknown as { weight: tf.Tensor }).weight.shape);
        expect(maxRelativeError(g.dataSync(), values(expected[`grad.${p}`])), p).toBeLessThan(1e-5);
      }
      // back in eval mode; the weights still frozen as they were, and no gradient attached
      expect(net.training).toBe(false);
      expect(net.parameters().every((p) => p.trainable)).toBe(true);
      expect(hasLoraGaGradient(net.q_proj)).toBe(false);
      tf.dispose([...grads.values()]);
      net.dispose();
    });
  }

  it('a module used twice a batch: the sum over its uses divided by its backward count, as PEFT', async () => {
    const net = withWeights(() => new TwiceNet(), 'twice-base.safetensors');
    const tw = readFixture('twice-expected.safetensors');
    const grads = await estimateGradients(
      net,
      { r: 2, loraAlpha: 4, targetModules: ['lin', 'out'], initLoraWeights: 'lora_ga', loraGaConfig: {} },
      async (backward) => {
        for (let i = 0; i < 3; i++) await backward(() => tf.mean(tf.square(net.call(tw[`x.${i}`]))) as tf.Scalar);
      },
    );
    for (const p of ['lin', 'out'])
      expect(maxRelativeError((grads.get(p) as tf.Tensor).dataSync(), values(tw[`grad.${p}`])), p).toBeLessThan(1e-5);
    tf.dispose([...grads.values(), ...Object.values(tw)]);
    net.dispose();
  });
});

describe('initialisation from the gradient (PEFT 0.21 lora_ga_init)', () => {
  for (const direction of DIRECTIONS)
    for (const scale of SCALES) {
      it(`${direction} + ${scale}: sv(s·B·A), ‖W_new − W0‖, ‖A‖, ‖B‖ as PEFT's; W_new + s·B·A = W0; output unchanged`, async () => {
        const key = `${direction}.${scale}`;
        const net = withWeights(() => new LoraGaNet(), 'net-base.safetensors');
        const cfg = config({ direction, scale });
        const before = tf.memory().numTensors;
        const own = net.parameters().length;
        await preprocessLoraga(net, cfg, fixtureTrainStep(net, expected));
        manualSeed(162);
        const peft = getPeftModel(net, cfg);
        await peft.initialized();
        peft.eval();
        const layers = new Map<string, TunerLayer>(peft.loraLayers());
        for (const p of GRAD_TARGETS) {
          const layer = layers.get(p) as TunerLayer;
          const s = layer.scaling.get('default') as number;
          const a = layer.factorA('default');
          const b = layer.factorB('default');
          const [out, inF] = [b.shape[0] as number, a.shape[1] as number];
          const sba = tf.tidy(() => tf.mul(tf.matMul(b, a), s));
          const sv = singularValues(sba.dataSync(), out, inF).slice(0, 4);
          // q = min(4r, min(out, in)) covers every component of q_proj and c_fc: the SVD is exact there (up to
          // round-off), and random only for head (q = 16 of 20); weight_svd's σ₁(W) is random everywhere (q = r)
          const tol = Math.min(out, inF) <= 16 && scale !== 'weight_svd' ? 1e-4 : 1e-2;
          expect(maxRelativeError(sv, values(expected[`${key}.${p}.sv`])), `${p} sv(s·B·A)`).toBeLessThan(tol);
          const w0 = values(base[`${p}.weight`]);
          const w = layer.baseLayer.weight.dataSync();
          const diff = w.map((v, i) => v - (w0[i] as number));
          const rel = (x: number, name: string) =>
            Math.abs(x / (values(expected[`${key}.${p}.${name}`])[0] as number) - 1);
          expect(rel(frob(diff), 'delta_norm'), `${p} ‖W_new − W0‖`).toBeLessThan(tol);
          expect(rel(frob(a.dataSync()), 'a_norm'), `${p} ‖A‖`).toBeLessThan(tol);
          expect(rel(frob(b.dataSync()), 'b_norm'), `${p} ‖B‖`).toBeLessThan(tol);
          // W_new + s·B·A = W0 (in the weight's layout: a TransposedLinear stores [in, out])
          const restored = tf.tidy(() => {
            const delta = layer.settings.get('default')?.fanInFanOut ? tf.transpose(sba) : sba;
            return tf.add(layer.baseLayer.weight, delta);
          });
          expect(maxRelativeError(restored.dataSync(), w0), `${p} W_new + s·B·A`).toBeLessThan(1e-5);
          tf.dispose([sba, restored]);
        }
        // Embedding and Conv1d took the default init (ΔW = 0: B = 0, or A = 0 on an Embedding), base weight untouched
        for (const p of ['embed', 'conv']) {
          const layer = layers.get(p) as TunerLayer;
          expect(
            tf.tidy(() => tf.max(tf.abs(getDeltaWeight(layer, 'default'))).dataSync()[0]),
            `${p} ΔW`,
          ).toBe(0);
          expect(maxRelativeError(layer.baseLayer.weight.dataSync(), values(base[`${p}.weight`])), p).toBe(0);
        }
        const y = peft.call(expected.x) as tf.Tensor;
        expect(maxRelativeError(y.dataSync(), values(expected[`${key}.out`])), 'output as PEFT').toBeLessThan(1e-5);
        expect(maxRelativeError(y.dataSync(), values(expected.base_out)), 'output as the base').toBeLessThan(1e-5);
        y.dispose();
        for (const p of GRAD_TARGETS)
          expect(
            hasLoraGaGradient(net.getSubmodule(p) as never) ||
              hasLoraGaGradient((layers.get(p) as TunerLayer).baseLayer as never),
          ).toBe(false);
        peft.dispose();
        expect(tf.memory().numTensors, 'everything freed with the model').toBe(before - own);
      });
    }
});
