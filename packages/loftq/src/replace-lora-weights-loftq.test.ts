import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type LoraLinear, getPeftModel } from '@lora/core';
import { Linear, Module, withoutInit } from '@lora/nn';
import { initBackend, maxRelativeError, serializeSafetensors } from '@lora/tensor';
import { afterAll, describe, expect, it } from 'vitest';
import { matrix64, svd } from '@lora/linalg';
import { type QuantizedLinear, quantizeModel, replaceLoraWeightsLoftq } from '@lora/loftq';
import { baseNet } from './loftq-net.test-util';
import { FIX, gmat, readFixture } from './oracle.test-util';

await initBackend('cpu');
const dir = mkdtempSync(join(tmpdir(), 'loftq-replace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** One Linear(128 → 64) holding the reference's W (§7.4), saved as a checkpoint. */
class One extends Module {
  proj = this.registerModule(
    'proj',
    withoutInit(() => new Linear(128, 64, { bias: false })),
  );
  forward(x: tf.Tensor) {
    return this.proj.call(x);
  }
}
const W = gmat(64, 128, 71, 0.02);
writeFileSync(join(dir, 'one.safetensors'), await serializeSafetensors({ 'proj.weight': tf.tensor2d(W, [64, 128]) }));

describe('replaceLoraWeightsLoftq', () => {
  it('on an NF4 base: B·A is one LoftQ step of the checkpoint weight (the oracle’s), the base unchanged', async () => {
    const model = new One();
    model.proj.weight.assign(tf.tensor2d(W, [64, 128]));
    quantizeModel(model, { bits: 4 });
    const words = Array.from(await (model.proj as QuantizedLinear).weight.data());
    const peft = getPeftModel(model, { r: 8, loraAlpha: 8, targetModules: ['proj'] });
    const before = tf.memory().numTensors;
    const result = await replaceLoraWeightsLoftq(peft, { modelPath: join(dir, 'one.safetensors') });
    expect(tf.memory().numTensors).toBe(before);
    expect(result).toEqual({ replaced: ['proj'], rolledBack: [] });
    const layer = model.getSubmodule('proj') as unknown as LoraLinear;
    const ba = tf.matMul(layer.factorB('default'), layer.factorA('default'));
    const fx = readFixture('quantizers.safetensors');
    expect(maxRelativeError(await ba.data(), fx['loftq.b4r8.t1.ba']?.dataSync() as Float32Array)).toBeLessThan(1e-4);
    expect(Array.from(await (layer.baseLayer as QuantizedLinear).weight.data())).toEqual(words);
    tf.dispose([ba, ...Object.values(fx)]);
    peft.dispose();
  });

  it('a directory with model.safetensors, every quantized format, and the callback keeps or rolls back each layer', async () => {
    const sub = join(dir, 'net');
    rmSync(sub, { recursive: true, force: true });
    (await import('node:fs')).mkdirSync(sub);
    (await import('node:fs')).copyFileSync(join(FIX, 'net-base.safetensors'), join(sub, 'model.safetensors'));
    for (const bits of [4, 3, 2, 8] as const) {
      const net = baseNet();
      quantizeModel(net, { bits, blockSize: bits === 2 || bits === 3 ? 32 : 64 });
      const peft = getPeftModel(net, { r: 4, loraAlpha: 4, targetModules: ['up', 'down'] });
      const a0 = await (net.getSubmodule('down') as unknown as LoraLinear).factorA('default').data();
      const seen: string[] = [];
      const r = await replaceLoraWeightsLoftq(peft, {
        modelPath: sub,
        callback: (m, name) => {
          expect(m).toBe(peft);
          seen.push(name);
          return name === 'up';
        },
      });
      expect(seen).toEqual(['up', 'down']);
      expect(r).toEqual({ replaced: ['up'], rolledBack: ['down'] });
      // down rolled back: its A is the one it had; up's B·A is LoftQ's one step on W − Q
      expect(Array.from(await (net.getSubmodule('down') as unknown as LoraLinear).factorA('default').data())).toEqual(
        Array.from(a0),
      );
      const up = net.getSubmodule('up') as unknown as LoraLinear;
      const fx = readFixture('net-base.safetensors');
      const q = (up.baseLayer as QuantizedLinear).dequantize();
      const e = tf.sub(fx['up.weight'] as tf.Tensor, q);
      // B·A is the best rank-4 approximation of W − Q: the top 4 singular triplets of E
      const { U, S, Vh } = svd(matrix64(32, 16, await e.data()));
      const best = new Float32Array(32 * 16);
      for (let i = 0; i < 32; i++)
        for (let j = 0; j < 16; j++)
          for (let k = 0; k < 4; k++)
            best[i * 16 + j] =
              (best[i * 16 + j] as number) +
              (U.data[i * 16 + k] as number) * (S[k] as number) * (Vh.data[k * 16 + j] as number);
      const ba = tf.matMul(up.factorB('default'), up.factorA('default'));
      expect(maxRelativeError(await ba.data(), best)).toBeLessThan(1e-5);
      tf.dispose([q, e, ba, ...Object.values(fx)]);
      peft.dispose();
    }
  });

  it('PEFT’s errors: not a PeftModel, no quantized layer, no model path, a missing tensor, no safetensors', async () => {
    await expect(replaceLoraWeightsLoftq(baseNet() as never)).rejects.toThrow(
      'The passed model does not appear to be a valid PeftModel',
    );
    const plain = getPeftModel(baseNet(), { r: 2, targetModules: ['up'] });
    await expect(replaceLoraWeightsLoftq(plain, { modelPath: dir })).rejects.toThrow(
      'No quantized LoRA layer found on the model',
    );
    plain.dispose();
    const net = baseNet();
    quantizeModel(net, { bits: 4 });
    const peft = getPeftModel(net, { r: 2, targetModules: ['up', 'head'] });
    await expect(replaceLoraWeightsLoftq(peft)).rejects.toThrow('you must pass the model_path argument (modelPath)');
    await expect(replaceLoraWeightsLoftq(peft, { modelPath: join(dir, 'one.safetensors') })).rejects.toThrow(
      "the checkpoint has no tensor 'up.weight'",
    );
    await expect(replaceLoraWeightsLoftq(peft, { modelPath: join(dir, 'nowhere') })).rejects.toThrow('does not exist');
    const empty = join(dir, 'empty');
    (await import('node:fs')).mkdirSync(empty, { recursive: true });
    writeFileSync(join(empty, 'pytorch_model.bin'), 'x');
    await expect(replaceLoraWeightsLoftq(peft, { modelPath: empty })).rejects.toThrow(
      'ensure that there is a (sharded) safetensors file of the model',
    );
    peft.dispose();
  });

  it('reads a sharded checkpoint (model.safetensors.index.json)', async () => {
    const sharded = join(dir, 'sharded');
    (await import('node:fs')).mkdirSync(sharded, { recursive: true });
    const fx = readFixture('net-base.safetensors');
    const names = Object.keys(fx);
    const halves = [names.filter((n) => n.startsWith('up')), names.filter((n) => !n.startsWith('up'))];
    const weightMap: Record<string, string> = {};
    for (const [i, part] of halves.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeFileSync(
        join(sharded, file),
        await serializeSafetensors(Object.fromEntries(part.map((n) => [n, fx[n] as tf.Tensor]))),
      );
      for (const n of part) weightMap[n] = file;
    }
    writeFileSync(
      join(sharded, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    const net = baseNet();
    quantizeModel(net, { bits: 4 });
    const peft = getPeftModel(net, { r: 2, targetModules: ['up', 'head'] });
    expect(await replaceLoraWeightsLoftq(peft, { modelPath: sharded })).toEqual({
      replaced: ['up', 'head'],
      rolledBack: [],
    });
    tf.dispose(Object.values(fx));
    peft.dispose();
  });
});
