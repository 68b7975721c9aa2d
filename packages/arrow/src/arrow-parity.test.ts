import * as tf from '@tensorflow/tfjs-core';
import { afterEach, expect, it } from 'vitest';
import { type ArrowConfig, type PeftModel, loadAdapter } from '@lora/core';
import { describeEachBackend, maxRelativeError } from '@lora/tensor/testing';
import { type PrototypeMethod, arrowRouters, createArrowModel } from '@lora/arrow';
import { GENERAL, TASKS, adapterFiles, baseNet, readFixture } from './arrow-net.test-util';

// read on the backend under test, freed after each test
let expected: Record<string, tf.Tensor> | null = null;
afterEach(() => {
  tf.dispose(Object.values(expected ?? {}));
  expected = null;
});
const want = (k: string): tf.Tensor => {
  expected ??= readFixture('expected.safetensors');
  const t = expected[k];
  if (!t) throw new Error(`no expected '${k}'`);
  return t;
};
const quiet = () => {};
const LAYERS = ['lin0', 'proj', 'mix'];

/** The cases tools/oracle/arrow_fixtures.py ran through PEFT's create_arrow_model (rng_seed 42 throughout). */
const CASES: [string, Partial<ArrowConfig>, boolean][] = [
  ['top2', { topK: 2, rngSeed: 42 }, false],
  ['top3-t05', { topK: 3, routerTemperature: 0.5, rngSeed: 42 }, false],
  ['gks', { topK: 2, useGks: true, rngSeed: 42 }, true],
  ['top1-all', { topK: 1, rngSeed: 42 }, false],
];

async function arrow(config: Partial<ArrowConfig>, gks: boolean, prototypes?: PrototypeMethod): Promise<PeftModel> {
  return createArrowModel(baseNet(), TASKS, config, {
    ...(gks ? { generalAdapterPaths: GENERAL } : {}),
    ...(prototypes ? { prototypes } : {}),
    warn: quiet,
  });
}

async function output(model: PeftModel): Promise<Float32Array> {
  const y = model.call(want('ids')) as tf.Tensor;
  const v = (await y.data()) as Float32Array;
  y.dispose();
  return v;
}

await describeEachBackend('Arrow routing against PEFT 0.21', () => {
  for (const [key, config, gks] of CASES) {
    it(`${key}: PEFT's logits and prototypes; a second forward gives the same logits`, async () => {
      want('ids');
      const before = tf.memory().numTensors;
      const model = await arrow(config, gks);
      const first = await output(model);
      expect(maxRelativeError(first, await want(`${key}.out`).data())).toBeLessThan(1e-5);
      expect([...arrowRouters(model)].map(([p]) => p).sort()).toEqual([...LAYERS].sort());
      for (const [path, router] of arrowRouters(model)) {
        expect(router.taskAdapterNames).toEqual(['task_0', 'task_1', 'task_2', 'task_3', 'task_4']);
        // the same start vector and the same 15 steps: PEFT's vectors, sign included
        const p = router.prototypes as tf.Tensor;
        expect(maxRelativeError(await p.data(), await want(`${key}.protos.${path}`).data()), path).toBeLessThan(1e-5);
        expect(router.prototypeBuilds).toBe(5);
      }
      const inTensors = tf.memory().numTensors;
      const second = await output(model);
      expect(second).toEqual(first);
      // PEFT's test: the prototypes are computed once (E calls on the first forward, none after)
      for (const [, router] of arrowRouters(model)) expect(router.prototypeBuilds).toBe(5);
      expect(tf.memory().numTensors).toBe(inTensors);
      model.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });

    it(`${key}: exact prototypes give PEFT's routing with the exact top singular vectors in place`, async () => {
      const model = await arrow(config, gks, 'exact');
      expect(maxRelativeError(await output(model), await want(`${key}.exact.out`).data())).toBeLessThan(1e-5);
      for (const [path, router] of arrowRouters(model)) {
        // sign-free comparison: |p·q| per expert, unit vectors
        const dots = tf.tidy(() =>
          tf.abs(tf.sum(tf.mul(router.prototypes as tf.Tensor, want(`${key}.exact.${path}`)), 1)),
        );
        for (const d of await dots.data()) expect(d, path).toBeGreaterThan(1 - 1e-6);
        dots.dispose();
      }
      model.dispose();
    });
  }

  it("GenKnowSub changes the experts' factors in place as PEFT does: (A − Ā, B − B̄)", async () => {
    const model = await arrow({ topK: 2, useGks: true, rngSeed: 42 }, true);
    await output(model);
    for (const [path, layer] of model.loraLayers())
      for (const n of ['task_0', 'task_4']) {
        expect(
          maxRelativeError(await layer.factorA(n).data(), await want(`gks.${n}.${path}.lora_A`).data()),
        ).toBeLessThan(1e-6);
        expect(
          maxRelativeError(await layer.factorB(n).data(), await want(`gks.${n}.${path}.lora_B`).data()),
        ).toBeLessThan(1e-6);
      }
    // once only: a second forward subtracts nothing more
    await output(model);
    const [path, layer] = [...model.loraLayers()][0]!;
    expect(
      maxRelativeError(await layer.factorA('task_0').data(), await want(`gks.task_0.${path}.lora_A`).data()),
    ).toBeLessThan(1e-6);
    model.dispose();
  });

  for (const forwardFirst of [true, false])
    it(`an expert loaded later gives the logits of loading it up front (GenKnowSub, ${forwardFirst ? 'after' : 'without'} a forward in between), as PEFT's test`, async () => {
      const model = await createArrowModel(
        baseNet(),
        TASKS.slice(0, 4),
        { topK: 2, useGks: true, rngSeed: 42 },
        {
          generalAdapterPaths: GENERAL,
          warn: quiet,
        },
      );
      if (forwardFirst) await output(model);
      await loadAdapter(model, TASKS[4] as string, { adapterName: 'new_added_ts_expert', warn: quiet });
      expect(model.activeAdapters).toEqual(['arrow_router']);
      for (const [, router] of arrowRouters(model))
        expect(router.taskAdapterNames).toEqual(['task_0', 'task_1', 'task_2', 'task_3', 'new_added_ts_expert']);
      expect(maxRelativeError(await output(model), await want('gks.out').data())).toBeLessThan(1e-5);
      model.dispose();
    });

  it('takes the adapters as files in memory (the browser path) and gives the same logits', async () => {
    const model = await createArrowModel(
      baseNet(),
      TASKS.map(adapterFiles),
      { topK: 2, useGks: true, rngSeed: 42 },
      {
        generalAdapterPaths: GENERAL.map(adapterFiles),
        warn: quiet,
      },
    );
    expect(maxRelativeError(await output(model), await want('gks.out').data())).toBeLessThan(1e-5);
    model.dispose();
  });
});
