/**
 * Seeded fuzz of the config paths an adapter from the internet or a careless user reaches: mutated
 * adapter_config.json read by loraConfigFromJson and loaded by loadAdapter, and option objects given to
 * getPeftModel. Every case ends in an accepted config (or model) or a deliberate error; never a hang, a
 * raw JS error (TypeError, RangeError, SyntaxError, …) or a leaked tensor.
 *
 * Cases scale with LORA_FUZZ_SCALE (1 in `npm test`; `npm run fuzz` runs 20 times as many, other seeds).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { Generator, describeValue, initBackend } from '@lora/tensor';
import { type LoraConfig, getPeftModel, loadAdapter, loraConfigFromJson } from '@lora/core';
import { FIX, baseNet } from './fixture-nets.test-util';

const SCALE = Number(process.env.LORA_FUZZ_SCALE ?? 1);
const SEED = Number(process.env.LORA_FUZZ_SEED ?? 20261201);
/** A case slower than this is a hang for our purposes (generous: CI shares two cores). */
const CASE_MS = 2000;

beforeAll(async () => {
  await initBackend('cpu');
});

const ADAPTERS = ['peft-qv', 'peft-patterns', 'peft-dora', 'peft-regex-bias', 'peft-modules-to-save'];
const seeds = ADAPTERS.map((a) => ({
  name: a,
  json: JSON.parse(readFileSync(join(FIX, a, 'adapter_config.json'), 'utf8')) as Record<string, unknown>,
  weights: new Uint8Array(readFileSync(join(FIX, a, 'adapter_model.safetensors'))),
}));

/** Errors that are raw JavaScript failures, never a message written for a user. */
function isRaw(e: unknown): boolean {
  return (
    !(e instanceof Error) ||
    [TypeError, RangeError, SyntaxError, ReferenceError, EvalError].some((c) => e.constructor === c)
  );
}

function deep(n: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < n; i++) v = [v];
  return v;
}

const HOSTILE_REGEX = [
  '^(([a-z0-9_.])+)+X$',
  '(\\w+\\.?)+Q$',
  '(.+)+_projZ',
  '(.*)*X',
  '((.)*)*\\d$',
  '(a)\\1',
  '(?=x)',
  '(',
  '[',
  '.*',
  '(?i)Q_PROJ',
  'q_proj|v_proj',
];

function randomValue(g: Generator, depth = 0): unknown {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(g.nextFloat24() * xs.length)] as T;
  switch (Math.floor(g.nextFloat24() * 12)) {
    case 0:
      return null;
    case 1:
      return pick([true, false]);
    case 2:
      return pick([0, 1, -1, 2, 4, 8, 0.5, 1.5, 1e9, 1e308, -1e308, 2 ** 53, 3.4e38, 1e-300]);
    case 3:
      return pick([
        '',
        'x',
        '8',
        'lm_head',
        'q_proj',
        'LORA',
        'none',
        'all',
        'pissa',
        'pissa_niter_4',
        'pissa_niter_99999999999',
        'all-linear',
        '__proto__',
      ]);
    case 4:
      return pick(HOSTILE_REGEX);
    case 5:
      return depth > 2 ? [] : Array.from({ length: Math.floor(g.nextFloat24() * 4) }, () => randomValue(g, depth + 1));
    case 6:
      return depth > 2
        ? {}
        : Object.fromEntries(
            Array.from({ length: Math.floor(g.nextFloat24() * 3) }, () => [
              pick([...HOSTILE_REGEX, 'mlp', 'q_proj', '__proto__']),
              randomValue(g, depth + 1),
            ]),
          );
    case 7:
      return deep(pick([10, 70, 1000]));
    case 8:
      return pick([['q_proj'], ['q_proj', 'v_proj'], ['nope'], [1, 2], [0, 1], [-1]]);
    case 9:
      return { mlp: pick([2, 0, -3, 'x', 1e9, null]) };
    case 10:
      return pick(['gaussian', 'olora', 'orthogonal', 'loftq', 'eva', 'lora_ga', 'corda']);
    default:
      return pick([4, 8, 16]);
  }
}

const FIELDS = [
  'r',
  'lora_alpha',
  'lora_dropout',
  'target_modules',
  'exclude_modules',
  'modules_to_save',
  'rank_pattern',
  'alpha_pattern',
  'layers_to_transform',
  'layers_pattern',
  'init_lora_weights',
  'use_dora',
  'use_rslora',
  'bias',
  'lora_bias',
  'fan_in_fan_out',
  'task_type',
  'trainable_token_indices',
  'peft_type',
  'layer_replication',
  'use_qalora',
  'target_parameters',
  'alora_invocation_tokens',
  'base_model_name_or_path',
  'unknown_key',
];

function mutateJson(src: Record<string, unknown>, g: Generator): Record<string, unknown> {
  const json = structuredClone(src);
  for (let k = 1 + Math.floor(g.nextFloat24() * 3); k > 0; k--) {
    const field = FIELDS[Math.floor(g.nextFloat24() * FIELDS.length)] as string;
    if (g.nextFloat24() < 0.15) delete json[field];
    else json[field] = randomValue(g);
  }
  return json;
}

function classify(e: unknown, what: string): void {
  if (isRaw(e))
    throw new Error(`${what}: raw ${(e as Error)?.constructor?.name}: ${String((e as Error)?.message ?? e)}`);
}

it(
  `seed ${SEED}: mutated adapter_config.json: ${2000 * SCALE} reads and ${100 * SCALE} loads end in a config or a written error`,
  async () => {
    const g = new Generator(SEED);
    const before = tf.memory().numTensors;
    const outcomes = { accepted: 0, refused: 0, loaded: 0, loadRefused: 0 };
    const quiet = { warn: () => undefined };
    for (let n = 0; n < 2000 * SCALE; n++) {
      const seed = seeds[n % seeds.length]!;
      const json = mutateJson(seed.json, g);
      const t0 = performance.now();
      try {
        loraConfigFromJson(json, quiet);
        outcomes.accepted++;
      } catch (e) {
        classify(e, `case ${n} ${describeValue(json, 300)}`);
        outcomes.refused++;
      }
      expect(performance.now() - t0, `case ${n} took too long`).toBeLessThan(CASE_MS);
      if (n % 20 !== 0) continue;
      // the same file through loadAdapter, onto a fresh model, with its weights
      const net = baseNet();
      const netTensors = tf.memory().numTensors;
      const t1 = performance.now();
      try {
        const { model } = await loadAdapter(
          net,
          { 'adapter_config.json': JSON.stringify(json), 'adapter_model.safetensors': seed.weights },
          quiet,
        );
        model.unload();
        outcomes.loaded++;
      } catch (e) {
        classify(e, `load ${n} ${describeValue(json, 300)}`);
        outcomes.loadRefused++;
      }
      expect(performance.now() - t1, `load ${n} took too long`).toBeLessThan(CASE_MS * 2);
      expect(tf.memory().numTensors, `load ${n} leaked`).toBe(netTensors);
      net.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    // both outcomes must occur, or the mutations test nothing
    expect(outcomes.accepted).toBeGreaterThan(100 * SCALE);
    expect(outcomes.refused).toBeGreaterThan(500 * SCALE);
    expect(outcomes.loaded).toBeGreaterThan(3 * SCALE);
  },
  120_000 * SCALE,
);

const OPTIONS: (keyof LoraConfig | string)[] = [
  'r',
  'loraAlpha',
  'loraDropout',
  'targetModules',
  'excludeModules',
  'modulesToSave',
  'rankPattern',
  'alphaPattern',
  'layersToTransform',
  'layersPattern',
  'initLoraWeights',
  'useDora',
  'useRslora',
  'bias',
  'loraBias',
  'fanInFanOut',
  'lora_alpha',
  'use_dora',
  'target_modules',
  'targetModule',
  'trainableTokenIndices',
];

it(
  `seed ${SEED}: option objects given to getPeftModel: ${400 * SCALE} cases end in a model or a written error`,
  () => {
    const g = new Generator(SEED + 1);
    const before = tf.memory().numTensors;
    let built = 0;
    let refused = 0;
    for (let n = 0; n < 400 * SCALE; n++) {
      const options: Record<string, unknown> = { targetModules: ['q_proj', 'mlp'] };
      for (let k = 1 + Math.floor(g.nextFloat24() * 3); k > 0; k--) {
        const key = OPTIONS[Math.floor(g.nextFloat24() * OPTIONS.length)] as string;
        options[key] = randomValue(g);
      }
      const net = baseNet();
      const netTensors = tf.memory().numTensors;
      const t0 = performance.now();
      try {
        getPeftModel(net, options as Partial<LoraConfig>).unload();
        built++;
      } catch (e) {
        classify(e, `options ${n} ${describeValue(options, 300)}`);
        refused++;
      }
      expect(performance.now() - t0, `options ${n} took too long`).toBeLessThan(CASE_MS * 2);
      expect(tf.memory().numTensors, `options ${n} leaked`).toBe(netTensors);
      net.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    expect(built).toBeGreaterThan(10 * SCALE);
    expect(refused).toBeGreaterThan(100 * SCALE);
  },
  120_000 * SCALE,
);
