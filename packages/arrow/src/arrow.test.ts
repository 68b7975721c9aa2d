import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LoraConfigError, type PeftModel, isTunerLayer, loadAdapter, saveAdapter } from '@lora/core';
import { AdamW, manualSeed } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import { describeEachBackend, maxRelativeError, startFakeHub } from '@lora/tensor/testing';
import {
  ArrowError,
  addArrowRouter,
  arrowConfig,
  arrowRouters,
  buildArrowPrototypes,
  createArrowModel,
} from '@lora/arrow';
import { type ArrowNet, FIX, GENERAL, TASKS, baseNet, fixtureDir } from './arrow-net.test-util';

const quiet = () => {};
const errors = JSON.parse(readFileSync(join(FIX, 'errors.json'), 'utf8')) as Record<
  string,
  { type: string; message: string } | null
>;
const peftMessage = (k: string) => (errors[k] as { message: string }).message;

let ids: tf.Tensor | null = null;
const input = () => {
  ids ??= tf.tensor2d(
    [
      [1, 5, 7, 19, 0],
      [3, 3, 12, 8, 15],
    ],
    [2, 5],
    'int32',
  );
  return ids;
};
afterEach(() => {
  ids?.dispose();
  ids = null;
});

async function out(model: PeftModel | ArrowNet, x = input()): Promise<Float32Array> {
  const y = model.call(x) as tf.Tensor;
  const v = (await y.data()) as Float32Array;
  y.dispose();
  return v;
}

/** The base net's modules are its own again (no LoRA layer left) and hold the fixture's weights. */
async function expectUntouched(net: ArrowNet, before: number) {
  expect([...net.namedModules()].some(([, m]) => isTunerLayer(m))).toBe(false);
  const fresh = baseNet();
  expect(maxRelativeError(await out(net), await out(fresh))).toBe(0);
  fresh.dispose();
  net.dispose();
  expect(tf.memory().numTensors).toBe(before);
}

describe('createArrowModel refuses, leaving the base model as it was', () => {
  beforeAll(() => initBackend('cpu'));

  const refusals: [string, () => [string[], object, object], string, RegExp][] = [
    [
      'experts of different ranks',
      () => [[TASKS[0] as string, fixtureDir('rank-8')], { topK: 1 }, {}],
      'rank',
      /^\[task_1\] rank mismatch: 8 != 4 \(on 'lin0'\)/,
    ],
    [
      'experts on different modules',
      () => [[TASKS[0] as string, fixtureDir('lin0-only')], { topK: 1 }, {}],
      'targets',
      /^\[task_1\] target_modules mismatch:\n {2}this adapter -> \[lin0\]\n {2}reference {3}-> \[lin0, mix, proj\] \(task_0\)\ntask_1 lacks \[mix, proj\]/,
    ],
    // PEFT lets an Embedding target through (it looks in lora_A only) and runs the router there as a plain zero LoRA
    [
      'an Embedding target',
      () => [[fixtureDir('embed-target')], { topK: 1 }, {}],
      'layer-type',
      /^LoRA adapters must only target Linear-like layers .*Found:\n {2}- adapter 'task_0' on module 'embed' of type Embedding/s,
    ],
    [
      'a DoRA expert',
      () => [[TASKS[0] as string, fixtureDir('dora')], { topK: 1 }, {}],
      'expert-kind',
      /adapter 'task_1' uses DoRA \(use_dora\) on 'lin0'/,
    ],
    [
      'topK above the number of experts',
      () => [TASKS.slice(0, 2), { topK: 3 }, {}],
      'top-k',
      /^top_k is 3 but 2 task adapters were given.*Set topK to at most 2/,
    ],
    [
      'no task adapter',
      () => [[], {}, {}],
      'no-task-adapters',
      new RegExp(`^${peftMessage('empty').replace(/[`.]/g, '\\$&')}`),
    ],
    [
      'useGks without general adapters',
      () => [TASKS.slice(0, 2), { topK: 1, useGks: true }, {}],
      'no-general-adapters',
      new RegExp(`^${peftMessage('no_general').replace(/\./g, '\\.')}`),
    ],
    [
      'a missing adapter directory',
      () => [[TASKS[0] as string, join(FIX, 'no-such-expert')], { topK: 1 }, {}],
      '',
      /^task adapter 1 \(task_1, '.*no-such-expert'\): .*does not exist/,
    ],
  ];
  for (const [what, args, code, message] of refusals)
    it(what, async () => {
      input();
      const before = tf.memory().numTensors;
      const net = baseNet();
      const [paths, config, options] = args();
      const err = await createArrowModel(net, paths, config, { warn: quiet, ...options }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      if (code) {
        expect(err).toBeInstanceOf(ArrowError);
        expect((err as ArrowError).code).toBe(code);
      }
      expect((err as Error).message).toMatch(message);
      await expectUntouched(net, before);
    });

  it("checks arrowConfig as PEFT's ArrowConfig", async () => {
    const net = baseNet();
    await expect(createArrowModel(net, TASKS, { topK: 0 })).rejects.toThrow(new LoraConfigError(peftMessage('top_k')));
    await expect(createArrowModel(net, TASKS, { routerTemperature: 0 })).rejects.toThrow(peftMessage('temperature'));
    net.dispose();
  });

  it('refuses to merge while the router is active (PEFT: RuntimeError), writing nothing', async () => {
    const model = await createArrowModel(baseNet(), TASKS.slice(0, 2), { topK: 1 }, { warn: quiet });
    const y = await out(model);
    expect(() => model.mergeAndUnload()).toThrow(peftMessage('merge'));
    expect(() => model.mergeAdapter()).toThrow(peftMessage('merge'));
    await expect(model.mergeAdapter({ safeMerge: true })).rejects.toThrow(peftMessage('merge'));
    expect(await out(model)).toEqual(y);
    model.dispose();
  });
});

describe('Arrow models', () => {
  beforeAll(() => initBackend('cpu'));

  it('route differently over 2 and 3 experts, with GenKnowSub or without, and with an expert active instead', async () => {
    const make = (n: number, gks: boolean) =>
      createArrowModel(
        baseNet(),
        TASKS.slice(0, n),
        { topK: 2, useGks: gks, rngSeed: 42 },
        {
          ...(gks ? { generalAdapterPaths: GENERAL } : {}),
          warn: quiet,
        },
      );
    const [two, three, threeGks] = await Promise.all([make(2, false), make(3, false), make(3, true)]);
    const y3 = await out(three);
    expect(maxRelativeError(await out(two), y3)).toBeGreaterThan(1e-3);
    expect(maxRelativeError(await out(threeGks), y3)).toBeGreaterThan(1e-3);
    three.setAdapter('task_2');
    expect(maxRelativeError(await out(three), y3)).toBeGreaterThan(1e-3);
    three.setAdapter('arrow_router');
    expect(await out(three)).toEqual(y3);
    for (const m of [two, three, threeGks]) m.dispose();
  });

  it('an expert removed is routed over no more: the same logits as a model made without it', async () => {
    const all = await createArrowModel(baseNet(), TASKS, { topK: 2, rngSeed: 42 }, { warn: quiet });
    await out(all);
    all.deleteAdapter('task_4');
    for (const [, router] of arrowRouters(all)) {
      expect(router.taskAdapterNames).toEqual(['task_0', 'task_1', 'task_2', 'task_3']);
      expect(router.prototypesReady).toBe(false);
    }
    const four = await createArrowModel(baseNet(), TASKS.slice(0, 4), { topK: 2, rngSeed: 42 }, { warn: quiet });
    expect(maxRelativeError(await out(all), await out(four))).toBeLessThan(1e-6);
    all.dispose();
    four.dispose();
  });

  it('runs a mixed batch: each row through the router or the base, as PEFT runs variants on their rows', async () => {
    const model = await createArrowModel(baseNet(), TASKS, { topK: 2, rngSeed: 42 }, { warn: quiet });
    const routed = await out(model);
    const y = model.call(input(), { adapterNames: ['arrow_router', '__base__'] }) as tf.Tensor;
    const mixed = (await y.data()) as Float32Array;
    y.dispose();
    const base = baseNet();
    const plain = await out(base);
    expect(maxRelativeError(mixed.slice(0, 30), routed.slice(0, 30))).toBeLessThan(1e-6);
    expect(maxRelativeError(mixed.slice(30), plain.slice(30))).toBeLessThan(1e-6);
    base.dispose();
    model.dispose();
  });

  it('addArrowRouter routes over adapters already in a model, under their own names, as createArrowModel does', async () => {
    const { model: peft } = await loadAdapter(baseNet(), TASKS[0] as string, { adapterName: 'sql', warn: quiet });
    await loadAdapter(peft, TASKS[1] as string, { adapterName: 'math', warn: quiet });
    await loadAdapter(peft, TASKS[2] as string, { adapterName: 'chat', warn: quiet });
    expect(() => addArrowRouter(peft, arrowConfig({ topK: 2, taskAdapterNames: ['sql', 'maths'] }))).toThrow(
      /the model has no adapter 'maths' \(it has sql, math, chat\)/,
    );
    addArrowRouter(peft, arrowConfig({ topK: 2, rngSeed: 42, taskAdapterNames: ['sql', 'math', 'chat'] }));
    expect(peft.activeAdapters).toEqual(['arrow_router']);
    const made = await createArrowModel(baseNet(), TASKS.slice(0, 3), { topK: 2, rngSeed: 42 }, { warn: quiet });
    expect(maxRelativeError(await out(peft), await out(made))).toBeLessThan(1e-6);
    peft.dispose();
    made.dispose();
  });

  it('compares every module, not only the last (PEFT): an expert whose rank differs on the first module alone is refused', async () => {
    const { model: peft } = await loadAdapter(baseNet(), TASKS[0] as string, { adapterName: 'sql', warn: quiet });
    await loadAdapter(peft, TASKS[1] as string, { adapterName: 'math', warn: quiet });
    const paths = [...peft.loraLayers()].map(([p]) => p);
    expect(paths.length).toBeGreaterThan(1);
    // rank 8 on the first module only (rank_pattern), 4 everywhere else, as the other expert
    peft.updateAdapterLayer(paths[0] as string, 'math', { r: 8 });
    const before = tf.memory().numTensors;
    const err = (() => {
      try {
        addArrowRouter(peft, arrowConfig({ topK: 1, taskAdapterNames: ['sql', 'math'] }));
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ArrowError);
    expect((err as ArrowError).code).toBe('rank');
    expect((err as Error).message).toContain(`rank mismatch: 8 != 4 (on '${paths[0]}')`);
    expect(peft.adapters).toEqual(['sql', 'math']); // no router added
    expect(tf.memory().numTensors).toBe(before);
    peft.dispose();
  });

  it('counts how much each expert was used when asked (routing weight and slots per expert)', async () => {
    const model = await createArrowModel(baseNet(), TASKS, { topK: 2, rngSeed: 42 }, { warn: quiet });
    for (const [, router] of arrowRouters(model)) router.recordUsage = true;
    await out(model);
    await out(model);
    for (const [path, router] of arrowRouters(model)) {
      const u = await router.usage();
      expect(u.names).toEqual(['task_0', 'task_1', 'task_2', 'task_3', 'task_4']);
      expect(u.tokens).toBe(20);
      // every token's coefficients sum to 1, and it takes k slots
      expect(
        u.weight.reduce((a, b) => a + b, 0),
        path,
      ).toBeCloseTo(20, 4);
      expect(
        u.slots.reduce((a, b) => a + b, 0),
        path,
      ).toBe(40);
      for (const [e, w] of u.weight.entries()) expect(w <= (u.slots[e] as number) + 1e-6).toBe(true);
    }
    model.deleteAdapter('task_4');
    for (const [, router] of arrowRouters(model)) expect((await router.usage()).tokens).toBe(0);
    model.dispose();
  });

  it('without rngSeed starts from the generator manualSeed seeds (PEFT: the global torch generator)', async () => {
    const run = async () => {
      manualSeed(7);
      const m = await createArrowModel(baseNet(), TASKS, { topK: 2 }, { warn: quiet });
      const y = await out(m);
      m.dispose();
      return y;
    };
    expect(await run()).toEqual(await run());
  });

  it("saves the experts and the router in PEFT's layout, arrow_config written with its task names", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'arrow-save-'));
    try {
      const model = await createArrowModel(baseNet(), TASKS.slice(0, 2), { topK: 1, rngSeed: 3 }, { warn: quiet });
      await saveAdapter(model, dir, { selectedAdapters: ['arrow_router'] });
      const json = JSON.parse(await readFile(join(dir, 'arrow_router', 'adapter_config.json'), 'utf8'));
      expect(json.arrow_config).toEqual({
        top_k: 1,
        router_temperature: 1,
        use_gks: false,
        task_adapter_names: ['task_0', 'task_1'],
        gks_adapter_names: [],
        rng_seed: 3,
      });
      expect(json.target_modules).toEqual(['lin0', 'mix', 'proj']);
      model.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads 'namespace/name/sub/folder' as a Hub repo's sub-folder, as PEFT's _resolve_adapter_source", async () => {
    const files: Record<string, Uint8Array> = {};
    for (const [i, dir] of TASKS.slice(0, 2).entries())
      for (const f of ['adapter_config.json', 'adapter_model.safetensors'])
        files[`experts/e${i}/${f}`] = new Uint8Array(readFileSync(join(dir, f)));
    const hub = await startFakeHub([{ id: 'someone/arrow-experts', files }]);
    const cacheDir = await mkdtemp(join(tmpdir(), 'arrow-hub-'));
    try {
      const opts = { hubUrl: hub.url, cacheDir, token: false as const, warn: quiet };
      const fromHub = await createArrowModel(
        baseNet(),
        ['someone/arrow-experts/experts/e0', 'someone/arrow-experts/experts/e1'],
        { topK: 1, rngSeed: 1 },
        opts,
      );
      const local = await createArrowModel(baseNet(), TASKS.slice(0, 2), { topK: 1, rngSeed: 1 }, { warn: quiet });
      expect(await out(fromHub)).toEqual(await out(local));
      await expect(
        createArrowModel(baseNet(), ['someone/arrow-experts/experts/e9'], { topK: 1 }, opts),
      ).rejects.toThrow(/someone\/arrow-experts has no adapter in the sub-folder 'experts\/e9'/);
      fromHub.dispose();
      local.dispose();
    } finally {
      await hub.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});

await describeEachBackend('Arrow models on', (backend) => {
  it("PEFT's test: with set_adapter('task_0') a training step changes task_0's A; back on the router, routing uses the new weights", async () => {
    const model = await createArrowModel(baseNet(), TASKS.slice(0, 3), { topK: 2, rngSeed: 42 }, { warn: quiet });
    const routedBefore = await out(model);
    // PEFT's set_adapter makes the adapter trainable even if it was loaded for inference; @lora/core's
    // setAdapter keeps an inference-mode adapter frozen, so the test says it trains
    model.peftConfig.set('task_0', { ...model.peftConfig.get('task_0')!, inferenceMode: false });
    model.setAdapter('task_0');
    const [path, layer] = [...model.loraLayers()][0]!;
    const a0 = await layer.factorA('task_0').data();
    model.train();
    const params = model.trainableParameters();
    expect(params.length).toBe(6);
    const opt = new AdamW(params, { lr: 0.05 });
    const { value, grads } = tf.variableGrads(
      () => tf.sum(tf.square(model.call(input()) as tf.Tensor)) as tf.Scalar,
      params,
    );
    opt.step(grads);
    tf.dispose([value, ...Object.values(grads)]);
    model.eval();
    expect(maxRelativeError(await layer.factorA('task_0').data(), a0), path).toBeGreaterThan(1e-4);
    model.setAdapter('arrow_router');
    const routedAfter = await out(model);
    expect(maxRelativeError(routedAfter, routedBefore)).toBeGreaterThan(1e-5);
    // the same as a model whose task_0 holds these weights from the start
    const saved = await mkdtemp(join(tmpdir(), 'arrow-trained-'));
    try {
      await saveAdapter(model, saved, { selectedAdapters: ['task_0'] });
      const fresh = await createArrowModel(
        baseNet(),
        [join(saved, 'task_0'), ...TASKS.slice(1, 3)],
        { topK: 2, rngSeed: 42 },
        { warn: quiet },
      );
      // task_0's prototype is still the one built before training (PEFT's too: prototypes follow the adapter set, not the weights)
      for (const [, router] of arrowRouters(fresh)) router.invalidate();
      for (const [, router] of arrowRouters(model)) router.invalidate();
      expect(maxRelativeError(await out(model), await out(fresh))).toBeLessThan(1e-5);
      fresh.dispose();
    } finally {
      await rm(saved, { recursive: true, force: true });
    }
    model.dispose();
  });

  it('gradients flow through the routed layers to earlier trainable weights', async () => {
    const model = await createArrowModel(baseNet(), TASKS.slice(0, 3), { topK: 2, rngSeed: 42 }, { warn: quiet });
    const embed = (model.model as ArrowNet).embed.weight;
    embed.trainable = true;
    const y0 = await out(model);
    const g = tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => tf.sum(model.call(input()) as tf.Tensor) as tf.Scalar, [embed]);
      return [value, grads[embed.name] as tf.Tensor];
    });
    // the forward inside a tape (the dense formulation on the CPU backends) gives the same sum
    expect(Math.abs(((await g[0]!.data())[0] as number) - y0.reduce((a, b) => a + b, 0))).toBeLessThan(1e-3);
    const size = tf.sum(tf.abs(g[1] as tf.Tensor));
    expect((await size.data())[0]).toBeGreaterThan(0);
    size.dispose();
    tf.dispose(g);
    model.dispose();
  });

  if (backend.name === 'webgpu')
    it('exact prototypes: after an expert is added, webgpu asks for buildArrowPrototypes (it cannot read back in a forward)', async () => {
      const model = await createArrowModel(
        baseNet(),
        TASKS.slice(0, 3),
        { topK: 2 },
        { prototypes: 'exact', warn: quiet },
      );
      await out(model);
      await loadAdapter(model, TASKS[3] as string, { adapterName: 'late', warn: quiet });
      expect(() => tf.dispose(model.call(input()) as tf.Tensor)).toThrow(/run await buildArrowPrototypes\(model\)/);
      await buildArrowPrototypes(model);
      await out(model);
      model.dispose();
    });
});
