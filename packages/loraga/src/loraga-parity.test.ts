import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type LoraGaConfig, type TunerLayer, getDeltaWeight, getPeftModel, loraConfig } from '@lora/core';
import { matrix64, svd } from '@lora/linalg';
import { manualSeed } from '@lora/nn';
import { assertNoLeaks } from '@lora/tensor';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { estimateGradients, hasLoraGaGradient, preprocessLoraga } from '@lora/loraga';
import { LoraGaNet, TwiceNet, fixtureTrainStep, readFixture, withWeights } from './loraga-net.test-util';

const TARGETS = ['embed', 'q_proj', 'c_fc', 'conv', 'head'];
const GRAD_TARGETS = ['q_proj', 'c_fc', 'head'];
const DIRECTIONS = ['ArBr', 'A2rBr', 'ArB2r'] as const;
const SCALES = ['stable', 'weight_svd', 'gd_scale', 'unit'] as const;

/** A fixture file's values by name, read on the active backend (asynchronously: webgpu reads no other way). */
async function fixtureValues(file: string): Promise<Record<string, Float32Array>> {
  const tensors = readFixture(file);
  const out: Record<string, Float32Array> = {};
  for (const [k, t] of Object.entries(tensors)) out[k] = Float32Array.from(await t.data());
  tf.dispose(Object.values(tensors));
  return out;
}
const need = (v: Record<string, Float32Array>, k: string) => {
  const x = v[k];
  if (!x) throw new Error(`missing fixture tensor ${k}`);
  return x;
};
const read = async (t: tf.Tensor) => Float32Array.from(await t.data());

const config = (loraGaConfig: Partial<LoraGaConfig>) =>
  loraConfig({ r: 4, loraAlpha: 8, targetModules: TARGETS, initLoraWeights: 'lora_ga', loraGaConfig });

const frob = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0));

await describeEachBackend('LoRA-GA against PEFT 0.21 fixtures', () => {
  for (const offload of [false, true]) {
    it(`mean gradients: every Linear / Conv1D target's as PEFT's estimate_gradients, Embedding and Conv1d left out${offload ? ' (offloaded)' : ''}`, async () => {
      const expected = readFixture('net-expected.safetensors');
      const want = await fixtureValues('net-expected.safetensors');
      const net = withWeights(() => new LoraGaNet(), 'net-base.safetensors').eval();
      const grads = await assertNoLeaks(
        () => estimateGradients(net, config({}), fixtureTrainStep(net, expected), { offload }),
        'estimateGradients',
      );
      expect([...grads.keys()]).toEqual(GRAD_TARGETS);
      for (const p of GRAD_TARGETS) {
        const g = grads.get(p) as tf.Tensor;
        expect(g.shape, p).toEqual((net.getSubmodule(p) as unknown as { weight: tf.Tensor }).weight.shape);
        expect(maxRelativeError(await read(g), need(want, `grad.${p}`)), p).toBeLessThan(1e-5);
      }
      // back in eval mode; the weights still trainable as they were, and no gradient attached
      expect(net.training).toBe(false);
      expect(net.parameters().every((p) => p.trainable)).toBe(true);
      expect(hasLoraGaGradient(net.q_proj)).toBe(false);
      tf.dispose([...grads.values(), ...Object.values(expected)]);
      net.dispose();
    });
  }

  it('mean gradients: a module used twice a batch, the sum over its uses divided by its backward count, as PEFT', async () => {
    const net = withWeights(() => new TwiceNet(), 'twice-base.safetensors');
    const tw = readFixture('twice-expected.safetensors');
    const want = await fixtureValues('twice-expected.safetensors');
    const grads = await estimateGradients(
      net,
      { r: 2, loraAlpha: 4, targetModules: ['lin', 'out'], initLoraWeights: 'lora_ga', loraGaConfig: {} },
      async (backward) => {
        for (let i = 0; i < 3; i++) await backward(() => tf.mean(tf.square(net.call(tw[`x.${i}`]))) as tf.Scalar);
      },
    );
    for (const p of ['lin', 'out'])
      expect(maxRelativeError(await read(grads.get(p) as tf.Tensor), need(want, `grad.${p}`)), p).toBeLessThan(1e-5);
    tf.dispose([...grads.values(), ...Object.values(tw)]);
    net.dispose();
  });

  for (const direction of DIRECTIONS)
    for (const scale of SCALES) {
      it(`init ${direction} + ${scale}: sv(s·B·A), ‖W_new − W0‖, ‖A‖, ‖B‖ as PEFT's; W_new + s·B·A = W0; output unchanged`, async () => {
        const key = `${direction}.${scale}`;
        const expected = readFixture('net-expected.safetensors');
        const want = await fixtureValues('net-expected.safetensors');
        const base = await fixtureValues('net-base.safetensors');
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
          const sv = svd(matrix64(out, inF, Float64Array.from(await sba.data()))).S.slice(0, 4);
          // q = min(4r, min(out, in)) covers every component of q_proj and c_fc: the SVD is exact there (up to
          // round-off), and random only for head (q = 16 of 20); weight_svd's σ₁(W) is random everywhere (q = r)
          const tol = Math.min(out, inF) <= 16 && scale !== 'weight_svd' ? 1e-4 : 1e-2;
          expect(maxRelativeError(sv, need(want, `${key}.${p}.sv`)), `${p} sv(s·B·A)`).toBeLessThan(tol);
          const w0 = need(base, `${p}.weight`);
          const w = await read(layer.baseLayer.weight);
          const rel = (x: number, name: string) => Math.abs(x / (need(want, `${key}.${p}.${name}`)[0] as number) - 1);
          expect(rel(frob(w.map((v, i) => v - (w0[i] as number))), 'delta_norm'), `${p} ‖W_new − W0‖`).toBeLessThan(
            tol,
          );
          expect(rel(frob(await read(a)), 'a_norm'), `${p} ‖A‖`).toBeLessThan(tol);
          expect(rel(frob(await read(b)), 'b_norm'), `${p} ‖B‖`).toBeLessThan(tol);
          // W_new + s·B·A = W0 (in the weight's layout: a TransposedLinear stores [in, out])
          const restored = tf.tidy(() => {
            const delta = layer.settings.get('default')?.fanInFanOut ? tf.transpose(sba) : sba;
            return tf.add(layer.baseLayer.weight, delta);
          });
          expect(maxRelativeError(await read(restored), w0), `${p} W_new + s·B·A`).toBeLessThan(1e-5);
          tf.dispose([sba, restored]);
        }
        // Embedding and Conv1d took the default init (ΔW = 0: B = 0, or A = 0 on an Embedding), base weight untouched
        for (const p of ['embed', 'conv']) {
          const layer = layers.get(p) as TunerLayer;
          const delta = getDeltaWeight(layer, 'default');
          expect(maxRelativeError(await read(delta), new Float32Array(delta.size)), `${p} ΔW`).toBe(0);
          delta.dispose();
          expect(maxRelativeError(await read(layer.baseLayer.weight), need(base, `${p}.weight`)), p).toBe(0);
        }
        const y = peft.call(expected.x) as tf.Tensor;
        expect(maxRelativeError(await read(y), need(want, `${key}.out`)), 'output as PEFT').toBeLessThan(1e-5);
        expect(maxRelativeError(await read(y), need(want, 'base_out')), 'output as the base').toBeLessThan(1e-5);
        y.dispose();
        for (const p of GRAD_TARGETS) expect(hasLoraGaGradient(net.getSubmodule(p))).toBe(false);
        peft.dispose();
        expect(tf.memory().numTensors, 'everything freed with the model').toBe(before - own);
        tf.dispose(Object.values(expected));
      });
    }
});
