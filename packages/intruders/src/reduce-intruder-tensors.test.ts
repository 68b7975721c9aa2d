import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { loraConfigFromJson, loraFactorKeys } from '@lora/core';
import { initBackend, maxRelativeError } from '@lora/tensor';
import { IntruderReductionError } from './errors';
import { FIX, optionsOf, readFixture, records } from './intruder-nets.test-util';
import { reduceIntruderTensors } from './reduce-intruder-tensors';
import { WeightSvdCache } from './weight-svd-cache';

beforeAll(async () => {
  await initBackend('cpu');
});

const adapterOf = (net: string) => ({
  config: loraConfigFromJson(JSON.parse(readFileSync(join(FIX, net, 'adapter', 'adapter_config.json'), 'utf8'))),
  tensors: readFixture(`${net}/adapter/adapter_model.safetensors`),
});

/** s·B·A in the weight's stored layout, for a file's factors (Linear: B·A; Embedding and Conv1D: (B·A)ᵀ). */
function storedDelta(a: tf.Tensor, b: tf.Tensor, s: number, transposed: boolean): tf.Tensor {
  return tf.tidy(() => {
    const ba = tf.mul(tf.matMul(b as tf.Tensor2D, a as tf.Tensor2D), s);
    return transposed ? tf.transpose(ba) : ba;
  });
}

for (const net of ['net', 'gpt'] as const) {
  describe(`reduceIntruderTensors on the ${net} fixture's files`, () => {
    for (const [setting, record] of Object.entries(records(net))) {
      it(`${setting}: PEFT's intruder counts and new ΔW, reading one base weight at a time`, async () => {
        const adapter = adapterOf(net);
        const base = readFixture(`${net}/base.safetensors`);
        const expected = readFixture(`${net}/${setting}.safetensors`);
        const asked: string[] = [];
        const count = tf.memory().numTensors;
        const lines: string[] = [];
        const { tensors, layers } = await reduceIntruderTensors(
          adapter,
          async (name) => {
            asked.push(name);
            const t = base[name];
            return t ? { values: (await t.data()) as Float32Array, shape: t.shape } : undefined;
          },
          { ...optionsOf(record), loggingSink: (l) => lines.push(l) },
        );
        // PEFT's lines, in the file's order (a file does not record the model's), and no "Enabling new adapter": no model
        expect([...lines].sort()).toEqual(record.lines.slice(0, -1).sort());
        expect(Object.fromEntries(layers.map((l) => [l.path, l.intruders.length]))).toEqual(record.intruders);
        expect(asked).toEqual(layers.map((l) => `${l.path}.weight`));
        expect(tf.memory().numTensors).toBe(count + Object.keys(tensors).length);
        for (const { path } of layers) {
          const embedding = path === 'embed';
          const [aKey, bKey] = loraFactorKeys(path, embedding);
          const a = tensors[aKey] ?? (adapter.tensors[aKey] as tf.Tensor);
          const b = tensors[bKey] ?? (adapter.tensors[bKey] as tf.Tensor);
          expect(a.shape).toEqual(adapter.tensors[aKey]?.shape);
          const s = record.scaling[path] as number;
          const got = storedDelta(a, b, s, embedding || net === 'gpt');
          const want = tf.tidy(() =>
            tf.mul(tf.matMul(expected[`${path}.B_new`] as tf.Tensor2D, expected[`${path}.A_new`] as tf.Tensor2D), s),
          );
          expect(maxRelativeError(await got.data(), await want.data())).toBeLessThan(1e-4);
          tf.dispose([got, want]);
        }
        tf.dispose([
          ...Object.values(tensors),
          ...Object.values(adapter.tensors),
          ...Object.values(base),
          ...Object.values(expected),
        ]);
      });
    }
  });
}

describe('reduceIntruderTensors: inputs that do not fit', () => {
  it('names a base weight the adapter needs and the base lacks', async () => {
    const adapter = adapterOf('net');
    const base = readFixture('net/base.safetensors');
    base['q_proj.weight']?.dispose();
    delete base['q_proj.weight'];
    await expect(reduceIntruderTensors(adapter, base, { loggingSink: null })).rejects.toThrow(
      /the base has no 'q_proj.weight', which the adapter's 'q_proj' adapts/,
    );
    tf.dispose([...Object.values(adapter.tensors), ...Object.values(base)]);
  });

  it('names factors that do not fit the weight or the config', async () => {
    const adapter = adapterOf('net');
    const base = readFixture('net/base.safetensors');
    const wrong = { ...base, 'up_proj.weight': tf.zeros([40, 30]) };
    const e = await reduceIntruderTensors(adapter, wrong, { loggingSink: null }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(IntruderReductionError);
    expect((e as Error).message).toMatch(
      /'up_proj': the factors do not make an update of the weight’s shape \(weight \[40, 30\]/,
    );
    const config = { ...adapter.config, rankPattern: {} };
    await expect(reduceIntruderTensors({ ...adapter, config }, base, { loggingSink: null })).rejects.toThrow(
      /'base_model.model.down_proj.lora_A.weight' has rank 2 but the adapter's config gives 'down_proj' r = 4/,
    );
    tf.dispose([...Object.values(adapter.tensors), ...Object.values(wrong)]);
  });

  it('knows a weight read again by its values (a cache across calls on files)', async () => {
    const adapter = adapterOf('gpt');
    const base = readFixture('gpt/base.safetensors');
    const cache = new WeightSvdCache();
    const exactCosines = true;
    const one = await reduceIntruderTensors(adapter, base, { loggingSink: null, svdCache: cache, exactCosines });
    const two = await reduceIntruderTensors(adapter, base, {
      loggingSink: null,
      svdCache: cache,
      mitigationLambda: 0,
      exactCosines,
    });
    expect(cache.stats).toMatchObject({ computed: 3, hits: 0, analysisHits: 3 });
    cache.dispose();
    tf.dispose([
      ...Object.values(one.tensors),
      ...Object.values(two.tensors),
      ...Object.values(adapter.tensors),
      ...Object.values(base),
    ]);
  });
});
