import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { Linear, linear, withoutInit } from '@lora/nn';
import { maxRelativeError } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { expect, it } from 'vitest';
import { QuantizationError, QuantizedLinear, int8Quantize, nf4Quantize, nfDequantize, nfQuantize } from '@lora/loftq';
import { int8DequantizeValues } from './int8';
import { gmat, mat, readFixture } from './oracle.test-util';

const W = gmat(64, 128, 71, 0.02);

/** A Linear holding `w` ([out, in]) and a bias. */
function linearOf(w: Float32Array, out: number, inF: number, bias = true): Linear {
  const l = withoutInit(() => new Linear(inF, out, { bias }));
  l.weight.assign(tf.tensor2d(w, [out, inF]));
  if (bias) l.bias?.assign(tf.tensor1d(mat(1, out, 9, 0.1)));
  return l;
}

await describeEachBackend('QuantizedLinear', () => {
  it('on the backend, NF4, 3- and 2-bit normal float and int8 codes equal the host quantizers and the oracle', async () => {
    const fx = readFixture('quantizers.safetensors');
    const lin = linearOf(W, 64, 128);
    const cases: [2 | 3 | 4 | 8, Float32Array][] = [
      [4, fx['nf4.spec.dequantized']?.dataSync() as Float32Array],
      [3, nfDequantize(nfQuantize({ data: W, shape: [64, 128] }, { bits: 3 })).dataSync() as Float32Array],
      [2, nfDequantize(nfQuantize({ data: W, shape: [64, 128] }, { bits: 2 })).dataSync() as Float32Array],
      [8, int8DequantizeValues(int8Quantize({ data: W, shape: [64, 128] }))],
    ];
    for (const [bits, expected] of cases) {
      const q = QuantizedLinear.fromLinear(lin, { bits });
      const w = q.dequantize();
      const got = await w.data();
      // cpu and wasm divide exactly: bit for bit; webgpu's float32 division is not correctly rounded
      if (tf.getBackend() === 'webgpu') expect(maxRelativeError(got, expected), `${bits} bits`).toBeLessThan(0.2);
      else expect(Array.from(got), `${bits} bits`).toEqual(Array.from(expected));
      tf.dispose(w);
      q.dispose();
    }
    lin.dispose();
    tf.dispose(Object.values(fx));
  });

  it('fromQuantized holds exactly the host codes; odd shapes, partial NF4 blocks and zero blocks decode', async () => {
    const shapes: [number, number][] = [
      [7, 13],
      [3, 64],
      [5, 40],
    ];
    for (const [out, inF] of shapes) {
      const data = mat(out, inF, out * inF, 0.5);
      data.fill(0, 0, Math.min(64, data.length)); // an all-zero first block
      const q4 = nf4Quantize({ data, shape: [out, inF] });
      const layer = QuantizedLinear.fromQuantized(q4);
      const w = layer.dequantize();
      const host = tf.tensor2d(Float32Array.from(await w.data()), [out, inF]);
      const ref = (await import('@lora/loftq')).nf4Dequantize(q4);
      expect(Array.from(await host.data())).toEqual(Array.from(await ref.data()));
      tf.dispose([w, host, ref]);
      layer.dispose();
      const q8 = int8Quantize({ data, shape: [out, inF] });
      const l8 = QuantizedLinear.fromQuantized(q8);
      const w8 = l8.dequantize();
      expect(Array.from(await w8.data())).toEqual(Array.from(int8DequantizeValues(q8)));
      w8.dispose();
      l8.dispose();
    }
  });

  it('forward and input gradient equal a Linear holding the dequantized weight; no weight gradient, no float copy kept', async () => {
    const lin = linearOf(W, 64, 128);
    const q = QuantizedLinear.fromLinear(lin, { bits: 4 });
    const wq = q.dequantize();
    const x = tf.tensor3d(mat(6, 128, 4, 1), [2, 3, 128]);
    const before = tf.memory().numTensors;
    const y = q.call(x) as tf.Tensor;
    const yRef = linear(x, wq, q.bias);
    expect(y.shape).toEqual([2, 3, 64]);
    expect(maxRelativeError(await y.data(), await yRef.data())).toBeLessThan(1e-6);
    tf.dispose([y, yRef]);
    expect(tf.memory().numTensors).toBe(before);
    // the gradient for x, and the bytes the tape keeps between the forward and the backward pass
    const probe = tf.variable(x);
    let keptQuantized = 0;
    let keptFloat = 0;
    const g = tf.variableGrads(() => {
      const start = tf.memory().numBytes;
      const out = tf.sum(tf.square(q.call(probe) as tf.Tensor)) as tf.Scalar;
      keptQuantized = tf.memory().numBytes - start;
      return out;
    }, [probe]);
    const gRef = tf.variableGrads(() => {
      const start = tf.memory().numBytes;
      const out = tf.sum(tf.square(linear(probe, wq, q.bias))) as tf.Scalar;
      keptFloat = tf.memory().numBytes - start;
      return out;
    }, [probe]);
    expect(
      maxRelativeError(
        await (g.grads[probe.name] as tf.Tensor).data(),
        await (gRef.grads[probe.name] as tf.Tensor).data(),
      ),
    ).toBeLessThan(1e-5);
    // a Linear's tape holds Wᵀ (64·128 floats) until the backward pass; the quantized layer holds no weight
    expect(keptFloat - keptQuantized).toBeGreaterThanOrEqual(64 * 128 * 4);
    expect(q.trainableParameters()).toEqual([]);
    tf.dispose([g.value, gRef.value, ...Object.values(g.grads), ...Object.values(gRef.grads), probe, wq, x]);
    q.dispose();
    lin.dispose();
  });

  it('bytes held: 4 bits 19%, 3 bits 15%, 2 bits 11%, 8 bits 35% of float32 (64 × 128, blocks of 64, the float32 bias counted)', () => {
    const lin = linearOf(W, 64, 128);
    const fp32 = 4 * (64 * 128 + 64);
    const ratios = ([4, 3, 2, 8] as const).map((bits) => {
      const q = QuantizedLinear.fromLinear(lin, { bits });
      const r = q.bytes / fp32;
      q.dispose();
      return r;
    });
    expect(ratios.map((r) => Math.round(r * 100))).toEqual([19, 15, 11, 35]);
    lin.dispose();
  });

  it('setWeight requantizes (idempotent on a dequantized weight) or keeps float32', async () => {
    const lin = linearOf(W, 64, 128);
    const q = QuantizedLinear.fromLinear(lin, { bits: 4 });
    const words = Array.from(await q.weight.data());
    const w = q.dequantize();
    q.setWeight(w);
    expect(Array.from(await q.weight.data())).toEqual(words);
    q.setWeight(w, false);
    expect(q.format).toBe('float32');
    expect(q.weight.shape).toEqual([64, 128]);
    const back = q.dequantize();
    expect(Array.from(await back.data())).toEqual(Array.from(await w.data()));
    tf.dispose([w, back]);
    q.dispose();
    lin.dispose();
  });
});

it('bad input: bits, block sizes that do not divide at 2 and 3 bits, shapes', () => {
  const lin = withoutInit(() => new Linear(12, 8));
  expect(() => QuantizedLinear.fromLinear(lin, { bits: 5 as 4 })).toThrow(
    'QuantizedLinear.fromLinear: bits is 5; quantized bases have 4 (NF4), 3 or 2 (normal float) or 8 (int8) bits',
  );
  expect(() => QuantizedLinear.fromLinear(lin, { bits: 2 })).toThrow(
    "QuantizedLinear.fromLinear: at 2 bits the normal-float quantizer needs the block size (64) to divide the weight's 96 values ([8, 12])",
  );
  expect(() => QuantizedLinear.fromLinear(lin, { bits: 4, blockSize: -1 })).toThrow(QuantizationError);
  expect(() => QuantizedLinear.fromQuantized(nf4Quantize({ data: new Float32Array(8), shape: [8] }))).toThrow(
    "a Linear's weight is 2-D ([out, in]); got shape [8]",
  );
  lin.dispose();
});
