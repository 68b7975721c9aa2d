/**
 * EVA's behaviour beyond the parity fixtures: the spec's three-layer case with custom forward and no
 * prepare functions, data sources (async, one-shot, re-iterable), stopping (maxPasses, abort), bad input
 * (clear errors, the model as it was), progress, and leaks.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, type PeftModel, getPeftModel, loraConfig } from '@lora/core';
import type { Module } from '@lora/nn';
import { beforeAll, describe, expect, it } from 'vitest';
import { ThreeNet, evaBatches, evaNet, loadNet, readFixture, readJson, startTestBackend } from './eva-nets.test-util';
import {
  EvaError,
  type EvaProgress,
  type EvaReport,
  getEvaStateDict,
  initializeLoraEvaWeights,
  prepareLayerInputsFnLanguageModeling,
} from './index';
import { factorsOnBackend } from './small-factor';

beforeAll(async () => {
  await startTestBackend();
});

const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const evaPeft = (fields: Partial<Parameters<typeof loraConfig>[0]> = {}) =>
  getPeftModel(evaNet(), { r: 4, loraAlpha: 8, targetModules: ALL, initLoraWeights: 'eva', ...fields });

/** Everything about a model that EVA must leave as it was: weights, modes, adapter flags, config. */
async function snapshot(model: Module) {
  const weights: Record<string, number[]> = {};
  for (const [name, p] of model.namedParameters()) weights[name] = Array.from(await p.data());
  const modes = [...model.namedModules()].map(([n, m]) => `${n}:${m.training}`);
  const peft = model as unknown as Partial<PeftModel>;
  const flags = peft.loraLayers ? [...peft.loraLayers()].map(([p, l]) => `${p}:${l.disableAdapters}`) : [];
  const config = peft.peftConfig ? JSON.stringify([...peft.peftConfig]) : '';
  const modules = [...model.namedModules()].map(([n, m]) => `${n}:${m.constructor.name}`);
  return { weights, modes, flags, config, modules };
}

describe("the spec's three layers (§7.5): b and c see equal inputs; forwardFn model(x), prepare functions null", () => {
  const three =
    readJson<
      Record<
        string,
        {
          shapes: Record<string, number[]>;
          rank_pattern: Record<string, number>;
          alpha_pattern: Record<string, number>;
          updates: Record<string, number>;
          scaling: Record<string, number>;
        }
      >
    >('three/result.json');
  for (const key of Object.keys(three)) {
    it(`${key}: PEFT's ranks, patterns, scalings and update counts`, async () => {
      const t = readFixture('three/inputs.safetensors');
      const xs = Array.from({ length: 10 }, (_, i) => t[`x.${i}`] as tf.Tensor2D);
      const weights = Object.fromEntries(['a', 'b', 'c'].map((n) => [`${n}.weight`, t[`${n}.weight`] as tf.Tensor]));
      const net = loadNet(() => new ThreeNet(), weights);
      const expected = three[key] as (typeof three)[string];
      const [rho, adjust] = [key.startsWith('rho2') ? 2 : 1, key.endsWith('-adjust')];
      const peft = getPeftModel(net, {
        r: 2,
        loraAlpha: 4,
        targetModules: ['a', 'b', 'c'],
        initLoraWeights: 'eva',
        evaConfig: { rho, adjustScalingFactors: adjust },
      });
      let report: EvaReport | undefined;
      await initializeLoraEvaWeights(peft, xs, {
        forwardFn: (model, x) => model.call(x),
        prepareModelInputsFn: null,
        prepareLayerInputsFn: null,
        progressBar: false,
        onComplete: (r) => {
          report = r;
        },
      });
      expect(report?.groups).toEqual([['base_model.model.b', 'base_model.model.c']]);
      expect(report?.updates).toEqual(expected.updates);
      expect(report?.ranks).toEqual(Object.fromEntries(Object.entries(expected.shapes).map(([k, v]) => [k, v[0]])));
      const config = peft.peftConfig.get('default') as LoraConfig;
      expect(config.rankPattern).toEqual(expected.rank_pattern);
      expect(config.alphaPattern).toEqual(expected.alpha_pattern);
      for (const [path, layer] of peft.loraLayers())
        expect(layer.scaling.get('default')).toBeCloseTo(expected.scaling[path] as number, 12);
      peft.dispose();
      tf.dispose(Object.values(t));
    });
  }
});

describe('data sources: the dataloader is read batch by batch, never held', () => {
  it('takes an async iterable and a function returning fresh generators, with the same result as an array', async () => {
    const batches = evaBatches(false);
    const config = loraConfig({ r: 4, targetModules: ['q_proj', 'o_proj'], initLoraWeights: 'eva' });
    const net = evaNet();
    const fromArray = await getEvaStateDict(net, batches, { peftConfig: config, progressBar: false });
    let opened = 0;
    async function* stream() {
      opened++;
      for (const b of batches) yield b;
    }
    const fromFunction = await getEvaStateDict(net, stream, { peftConfig: config, progressBar: false });
    expect(opened).toBeGreaterThan(1); // several passes, each on a new generator
    for (const k of Object.keys(fromArray))
      expect(await (fromFunction[k] as tf.Tensor).data()).toEqual(await (fromArray[k] as tf.Tensor).data());
    const asyncIterable = { [Symbol.asyncIterator]: stream };
    const fromAsync = await getEvaStateDict(net, asyncIterable, { peftConfig: config, progressBar: false });
    expect(Object.keys(fromAsync)).toEqual(Object.keys(fromArray));
    tf.dispose([...Object.values(fromArray), ...Object.values(fromFunction), ...Object.values(fromAsync)]);
    tf.dispose(batches.flatMap((b) => Object.values(b)));
    net.dispose();
  });

  it('holds no batch: each is freed when the next is asked for, and memory stays flat over the passes (PEFT cycles and keeps them all)', async () => {
    const source = evaBatches(false);
    const net = evaNet();
    let made = 0;
    let alive = 0;
    let mostAlive = 0;
    // every pass makes new batches (copies) and frees each one as soon as the next one is asked for:
    // a batch kept for a later pass would be used after its disposal and throw
    function* fresh() {
      for (const b of source) {
        const copy = { inputIds: b.inputIds.clone(), attentionMask: b.attentionMask.clone() };
        made++;
        alive++;
        mostAlive = Math.max(mostAlive, alive);
        try {
          yield copy;
        } finally {
          tf.dispose([copy.inputIds, copy.attentionMask]);
          alive--;
        }
      }
    }
    const tensorsAt: number[] = [];
    let report: EvaReport | undefined;
    const sd = await getEvaStateDict(net, fresh, {
      peftConfig: { r: 4, targetModules: ALL, initLoraWeights: 'eva' },
      progressBar: false,
      onProgress: () => tensorsAt.push(tf.memory().numTensors),
      onComplete: (r) => {
        report = r;
      },
    });
    expect(report?.passes).toBeGreaterThan(1);
    expect(made).toBe(report?.steps);
    expect(mostAlive).toBe(1);
    expect(alive).toBe(0);
    // the live tensors after each batch do not grow with the number of batches read
    expect(new Set(tensorsAt.slice(1)).size).toBe(1);
    tf.dispose(Object.values(sd));
    tf.dispose(source.flatMap((b) => Object.values(b)));
    net.dispose();
  });

  it('a one-shot generator that runs out first: warns naming the layers that did not converge, and returns their components', async () => {
    const batches = evaBatches(false);
    const net = evaNet();
    let closed = false;
    function* once() {
      try {
        yield* batches.slice(0, 2);
      } finally {
        closed = true;
      }
    }
    const warnings: string[] = [];
    const sd = await getEvaStateDict(net, once(), {
      peftConfig: { r: 4, targetModules: ALL, initLoraWeights: 'eva' },
      progressBar: false,
      warn: (m) => warnings.push(m),
    });
    expect(closed).toBe(true);
    expect(warnings.join('\n')).toMatch(
      /one-shot iterator, ran out after 2 batches.*before these layers converged: layers\.\d/s,
    );
    expect(Object.keys(sd)).toHaveLength(14);
    tf.dispose(Object.values(sd));
    tf.dispose(batches.flatMap((b) => Object.values(b)));
    net.dispose();
  });

  it('stops after maxPasses with a warning (PEFT has no limit)', async () => {
    const batches = evaBatches(false).slice(0, 1);
    const net = evaNet();
    const warnings: string[] = [];
    let report: EvaReport | undefined;
    const sd = await getEvaStateDict(net, batches, {
      peftConfig: { r: 4, targetModules: ALL, initLoraWeights: 'eva', evaConfig: { tau: 1 } },
      maxPasses: 3,
      progressBar: false,
      warn: (m) => warnings.push(m),
      onComplete: (r) => {
        report = r;
      },
    });
    expect(report?.steps).toBe(3);
    expect(report?.passes).toBe(3);
    expect(warnings.join('\n')).toContain(
      'after 3 passes over the dataloader (maxPasses) before these layers converged',
    );
    expect(report?.unconverged.length).toBeGreaterThan(0);
    tf.dispose(Object.values(sd));
    tf.dispose(batches.flatMap((b) => Object.values(b)));
    net.dispose();
  });
});

describe('progress and cancellation', () => {
  it('reports after each batch, and stops on abort with the model as it was', async () => {
    const batches = evaBatches(false);
    const peft = evaPeft();
    const before = await snapshot(peft);
    const seen: EvaProgress[] = [];
    const controller = new AbortController();
    const tensors = tf.memory().numTensors;
    await expect(
      initializeLoraEvaWeights(peft, batches, {
        progressBar: false,
        signal: controller.signal,
        onProgress: (p) => {
          seen.push(p);
          if (p.step === 3) controller.abort();
        },
      }),
    ).rejects.toThrow(/aborted/i);
    expect(seen.map((p) => p.step)).toEqual([1, 2, 3]);
    expect(seen[0]).toMatchObject({ pass: 1, batch: 0, totalLayers: 14 });
    expect(tf.memory().numTensors).toBe(tensors);
    expect(await snapshot(peft)).toEqual(before);
    tf.dispose(batches.flatMap((b) => Object.values(b)));
    peft.dispose();
  });
});

describe('bad input: clear errors, and the model as it was', () => {
  const cases: [
    string,
    (peft: PeftModel, batches: ReturnType<typeof evaBatches>) => Promise<unknown>,
    RegExp,
    string,
  ][] = [
    ['an empty dataloader', (p) => initializeLoraEvaWeights(p, []), /dataloader is empty/, 'empty-dataloader'],
    [
      'batches without inputIds',
      (p, b) =>
        initializeLoraEvaWeights(
          p,
          b.map((x) => ({ ids: x.inputIds })),
        ),
      /batch 0 of the dataloader is an object with keys 'ids', not a batch \{ inputIds/,
      'bad-batch',
    ],
    [
      'a tensor as a batch',
      (p, b) =>
        initializeLoraEvaWeights(
          p,
          b.map((x) => x.inputIds),
        ),
      /is a tensor of shape \[4, 16\], not a batch/,
      'bad-batch',
    ],
    [
      'a forwardFn that runs no target layer',
      (p, b) => initializeLoraEvaWeights(p, b, { forwardFn: () => undefined }),
      /no target layer received an input during the forward pass of batch 0/,
      'no-layer-inputs',
    ],
    [
      'a forwardFn that skips some target layers',
      (p, b) =>
        initializeLoraEvaWeights(p, b, {
          forwardFn: (m, batch) =>
            (m as PeftModel).model
              .getSubmodule('layers.0')
              .call((m as PeftModel).model.getSubmodule('embed').call((batch as { inputIds: tf.Tensor }).inputIds)),
        }),
      /7 target layer\(s\) received no input.*layers\.1\.q_proj/,
      'no-layer-inputs',
    ],
    [
      'a prepareLayerInputsFn mapping with unknown names',
      (p, b) =>
        initializeLoraEvaWeights(p, b, {
          prepareLayerInputsFn: { 'layers.9.q_proj': prepareLayerInputsFnLanguageModeling },
        }),
      /mapping but the following module names were not found in the model: layers\.9\.q_proj/,
      'bad-layer-inputs',
    ],
    [
      'a prepareLayerInputsFn returning 3-D rows',
      (p, b) => initializeLoraEvaWeights(p, b, { prepareLayerInputsFn: (args) => args[0] as tf.Tensor2D }),
      /returned a tensor of shape \[4, 16, 32\]; it must return a 2-D/,
      'bad-layer-inputs',
    ],
    [
      'neither a dataloader nor a state dict',
      (p) => initializeLoraEvaWeights(p),
      /dataloader is required if eva_state_dict is not provided/,
      'no-data',
    ],
    [
      'a state dict entry of the wrong width',
      (p) =>
        initializeLoraEvaWeights(p, null, { evaStateDict: { 'layers.0.q_proj': tf.zeros([2, 7]) as tf.Tensor2D } }),
      /'layers\.0\.q_proj' is a tensor of shape \[2, 7\]; the layer takes \[rank, 32\]/,
      'bad-state-dict',
    ],
  ];
  for (const [what, run, message, code] of cases) {
    it(`${what}: ${code}`, async () => {
      const batches = evaBatches(false);
      const peft = evaPeft();
      const before = await snapshot(peft);
      const tensors = tf.memory().numTensors;
      const error = await run(peft, batches).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(EvaError);
      expect((error as EvaError).code).toBe(code);
      expect((error as Error).message).toMatch(message);
      // a state dict given by the test is its own; everything EVA made is gone
      expect(tf.memory().numTensors - tensors).toBeLessThanOrEqual(what.startsWith('a state dict') ? 1 : 0);
      expect(await snapshot(peft)).toEqual(before);
      tf.dispose(batches.flatMap((b) => Object.values(b)));
      peft.dispose();
    });
  }

  it('rho < 1 and tau outside [0, 1] are refused with PEFT wording, before anything runs', async () => {
    expect(() => evaPeft({ evaConfig: { rho: 0.5 } })).toThrow('`rho` must be >= 1.0');
    const net = evaNet();
    await expect(
      getEvaStateDict(net, [], {
        peftConfig: { r: 4, targetModules: ALL, initLoraWeights: 'eva', evaConfig: { tau: 1.5 } },
      }),
    ).rejects.toThrow('`tau` must be between 0.0 and 1.0.');
    // a config changed after the model was made is checked again
    const peft = evaPeft();
    (peft.peftConfig.get('default') as LoraConfig).evaConfig = {
      ...(peft.peftConfig.get('default')?.evaConfig as NonNullable<LoraConfig['evaConfig']>),
      rho: 0.2,
    };
    await expect(initializeLoraEvaWeights(peft, [])).rejects.toThrow('`rho` must be >= 1.0');
    peft.dispose();
    net.dispose();
  });

  it('factorOnBackend where the backend cannot run it (wasm) is refused before anything runs', async (ctx) => {
    if (factorsOnBackend()) ctx.skip();
    const peft = evaPeft();
    const batches = evaBatches(false);
    let asked = 0;
    const loader = function* () {
      for (const b of batches) {
        asked++;
        yield b;
      }
    };
    const err = await initializeLoraEvaWeights(peft, loader, { factorOnBackend: true, progressBar: false }).catch(
      (e) => e,
    );
    expect(err).toBeInstanceOf(EvaError);
    expect((err as EvaError).code).toBe('bad-model');
    expect((err as Error).message).toContain(`the active one is '${tf.getBackend()}'`);
    expect(asked).toBe(0);
    // the float64 path never factors on the backend: the option does not apply there
    const net = evaNet();
    await expect(
      getEvaStateDict(net, [], {
        peftConfig: { r: 4, targetModules: ALL, initLoraWeights: 'eva' },
        precision: 'float64',
        factorOnBackend: true,
      }),
    ).rejects.toThrow('dataloader is empty');
    tf.dispose(batches.flatMap((b) => Object.values(b)));
    peft.dispose();
    net.dispose();
  });

  it("PEFT's refusals: not a PeftModel, several active adapters, an adapter not made with 'eva'", async () => {
    const net = evaNet();
    await expect(initializeLoraEvaWeights(net as unknown as PeftModel, [])).rejects.toThrow(
      'model must be a PeftModel',
    );
    await expect(getEvaStateDict(net, [])).rejects.toThrow('peft_config is required if model is not a PeftModel');
    const plain = getPeftModel(evaNet(), { r: 4, targetModules: ['q_proj'] });
    await expect(initializeLoraEvaWeights(plain, [])).rejects.toThrow(
      "can only be used with `init_lora_weights='eva'`",
    );
    const two = evaPeft();
    two.addAdapter('other', loraConfig({ r: 2, targetModules: ['q_proj'], initLoraWeights: 'eva' }));
    two.setAdapter(['default', 'other']);
    await expect(initializeLoraEvaWeights(two, [])).rejects.toThrow('only works with a single active adapter');
    for (const m of [net, plain, two]) m.dispose();
  });
});

describe('rank 0 and a state dict computed before getPeftModel', () => {
  it("a layer given no components loses its LoRA; a plain model's state dict loads into the PeftModel", async () => {
    const batches = evaBatches(false);
    const sd = await getEvaStateDict(evaNet(), batches, {
      peftConfig: { r: 4, targetModules: ['q_proj', 'o_proj'], initLoraWeights: 'eva' },
      progressBar: false,
    });
    (sd['layers.1.o_proj'] as tf.Tensor).dispose();
    sd['layers.1.o_proj'] = tf.zeros([0, 32]) as tf.Tensor2D;
    const peft = getPeftModel(evaNet(), { r: 4, targetModules: ['q_proj', 'o_proj'], initLoraWeights: 'eva' });
    const result = await initializeLoraEvaWeights(peft, null, { evaStateDict: sd });
    expect(result.ranks['layers.1.o_proj']).toBe(0);
    expect(peft.model.getSubmodule('layers.1.o_proj').constructor.name).toBe('Linear');
    expect([...peft.loraLayers()].map(([p]) => p)).not.toContain('layers.1.o_proj');
    expect(peft.peftConfig.get('default')?.targetModules).toEqual([
      'layers.0.q_proj',
      'layers.0.o_proj',
      'layers.1.q_proj',
    ]);
    const A = peft.model.getSubmodule('layers.0.q_proj') as unknown as { factorA(n: string): tf.Variable };
    expect(await A.factorA('default').data()).toEqual(await (sd['layers.0.q_proj'] as tf.Tensor).data());
    // a forward runs, and equals the base model's (B = 0)
    const y = peft.call(batches[0]?.inputIds) as tf.Tensor;
    const base = evaNet();
    const y0 = base.call(batches[0]?.inputIds) as tf.Tensor;
    expect(await tf.max(tf.abs(tf.sub(y, y0))).data()).toEqual(new Float32Array([0]));
    tf.dispose([y, y0, ...Object.values(sd), ...batches.flatMap((b) => Object.values(b))]);
    peft.dispose();
    base.dispose();
  });
});
