/**
 * Careless or hostile input to the config and adapter loading: what must fail clearly (a typed error
 * naming the field, the value and the fix), what must not hang, and what must never be guessed silently.
 */
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Linear, Module } from '@lora/nn';
import { initBackend } from '@lora/tensor';
import {
  AdapterFileError,
  LoraConfigError,
  type LoraConfig,
  getPeftModel,
  loadAdapter,
  loraConfig,
  loraConfigFromJson,
  matchModule,
  moduleScaling,
} from '@lora/core';
import { FIX, baseNet } from './fixture-nets.test-util';

beforeAll(async () => {
  await initBackend('cpu');
});

const QV = join(FIX, 'peft-qv');
const qvJson = () => JSON.parse(readFileSync(join(QV, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
const quiet = { warn: () => undefined };

/** A copy of the peft-qv adapter with its config changed. */
function adapterWith(change: (json: Record<string, unknown>) => void): string {
  const dir = mkdtempSync(join(tmpdir(), 'lora-untrusted-'));
  cpSync(QV, dir, { recursive: true });
  const json = qvJson();
  change(json);
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(json));
  return dir;
}

function configError(f: () => unknown): LoraConfigError {
  try {
    f();
  } catch (e) {
    if (e instanceof LoraConfigError) return e;
    throw new Error(`expected a LoraConfigError, got ${String(e)}`);
  }
  throw new Error('expected a LoraConfigError, but it was accepted');
}

describe('regular expressions match as PEFT 0.21 does (its own answers), on RE2', () => {
  const oracle = JSON.parse(readFileSync(join(FIX, 'regex-semantics.json'), 'utf8')) as {
    keys: string[];
    targets: { config: Record<string, unknown>; answers: Record<string, string> }[];
    patterns: { patterns: string[]; answers: Record<string, string | null> }[];
  };

  it('target_modules, exclude_modules, modules_to_save, layers_to_transform and layers_pattern', () => {
    for (const { config, answers } of oracle.targets) {
      const json = { peft_type: 'LORA', ...config };
      const c = loraConfigFromJson(json, quiet);
      for (const key of oracle.keys)
        expect([JSON.stringify(config), key, matchModule(c, key)]).toEqual([JSON.stringify(config), key, answers[key]]);
    }
  });

  it('rank_pattern keys (get_pattern_key)', () => {
    for (const { patterns, answers } of oracle.patterns) {
      const rankPattern = Object.fromEntries(patterns.map((p, i) => [p, i + 1]));
      const c = loraConfig({ r: 100, rankPattern });
      for (const key of oracle.keys) {
        const want = answers[key];
        expect([patterns, key, moduleScaling(c, key).r]).toEqual([
          patterns,
          key,
          want === null ? 100 : rankPattern[want as string],
        ]);
      }
    }
  });

  it('catastrophic-backtracking patterns finish at once (they hung loadAdapter and lora inspect)', async () => {
    const hostile = ['^(([a-z0-9_.])+)+X$', '(\\w+\\.?)+Q$', '(.+)+_projZ', '(.*)*X', '((.)*)*\\d$'];
    const key = `${'model.layers.0.self_attn.'.repeat(40)}q_proj_`;
    const t0 = performance.now();
    for (const p of hostile) {
      const c = loraConfig({ targetModules: ['q_proj'], rankPattern: { [p]: 2 }, alphaPattern: { [p]: 3 } });
      expect(moduleScaling(c, key).r).toBe(8);
      expect(matchModule(loraConfig({ targetModules: p }), key)).toBe('unmatched');
      expect(matchModule(loraConfig({ targetModules: ['q_proj'], excludeModules: p }), key)).toBe('unmatched');
    }
    // through a file, as the fuzz run found it
    const dir = adapterWith((j) => {
      j.rank_pattern = Object.fromEntries(hostile.map((p) => [p, 4]));
    });
    const { model } = await loadAdapter(baseNet(), dir, quiet);
    model.dispose();
    expect(performance.now() - t0).toBeLessThan(3000);
  });

  it('refuses Python-only features by name, and invalid patterns, as LoraConfigError', () => {
    const cases: [string, RegExp][] = [
      ['(q)_proj\\1', /backreference/],
      ['.*(?=q_proj)', /lookahead or lookbehind/],
      ['.*(?<!v)_proj', /lookahead or lookbehind/],
      ['(?>a|ab)c', /atomic group/],
      ['.*proj++', /possessive/],
      ['(?(1)a|b)', /conditional/],
      ['(', /not a valid regular expression/],
      ['[a-', /not a valid regular expression/],
    ];
    for (const [p, why] of cases) {
      for (const [field, fields] of [
        ['target_modules', { targetModules: p }],
        ['exclude_modules', { targetModules: ['q_proj'], excludeModules: p }],
        ['rank_pattern', { rankPattern: { [p]: 2 } }],
        ['alpha_pattern', { alphaPattern: { [p]: 2 } }],
        ['modules_to_save', { modulesToSave: [p] }],
        ['layers_pattern', { targetModules: ['q_proj'], layersToTransform: [0], layersPattern: p }],
      ] as const) {
        const e = configError(() => loraConfig(fields as Partial<LoraConfig>));
        expect(e.field).toBe(field);
        expect(e.message).toMatch(why);
        expect(e.message).toContain(field);
      }
    }
  });
});

describe('options given in TypeScript', () => {
  it("refuses PEFT's Python names instead of ignoring them (they saved as alpha 8, dropout 0, DoRA off)", () => {
    const before = tf.memory().numTensors;
    const net = baseNet();
    const e = configError(() =>
      getPeftModel(net, { lora_alpha: 64, lora_dropout: 0.5, use_dora: true, targetModules: ['q_proj'] } as never),
    );
    expect(e.message).toBe("unknown option 'lora_alpha': did you mean loraAlpha?");
    expect(configError(() => loraConfig({ targetModule: ['q_proj'] } as never)).message).toMatch(
      /did you mean targetModules\?/,
    );
    expect(configError(() => loraConfig({ loraalpha: 8 } as never)).message).toMatch(/did you mean loraAlpha\?/);
    expect(configError(() => loraConfig({ layer_replication: [[0, 1]] } as never)).message).toMatch(/not supported/);
    expect(configError(() => loraConfig({ zzz: 1 } as never)).message).toMatch(/LoraConfig options are peftType/);
    // a full config changed by hand is checked too
    expect(() => getPeftModel(net, { ...loraConfig({ targetModules: ['q_proj'] }), r: 0 })).toThrow(LoraConfigError);
    net.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it("fills targetModules from the model's type as PEFT does (q_proj, v_proj for llama), and names what to set otherwise", () => {
    class TinyLlama extends Module {
      config = { modelType: 'llama' };
      q_proj = this.registerModule('q_proj', new Linear(4, 4));
      k_proj = this.registerModule('k_proj', new Linear(4, 4));
      v_proj = this.registerModule('v_proj', new Linear(4, 4));
      forward(x: tf.Tensor): tf.Tensor {
        return x;
      }
    }
    const peft = getPeftModel(new TinyLlama(), { r: 2 });
    expect([...peft.loraLayers()].map(([p]) => p)).toEqual(['q_proj', 'v_proj']);
    expect(peft.peftConfig.get('default')?.targetModules).toEqual(['q_proj', 'v_proj']);
    peft.dispose();
    const snake = new TinyLlama();
    (snake as { config: unknown }).config = { model_type: 'qwen2' };
    getPeftModel(snake, {}).dispose();
    const other = new TinyLlama();
    other.config = { modelType: 'gpt2' };
    const e = configError(() => getPeftModel(other, {}));
    expect(e.message).toMatch(/Please specify `target_modules`.*model type "gpt2".*Set targetModules/);
    other.dispose();
    expect(configError(() => getPeftModel(baseNet(), {})).message).toMatch(/has no config\.modelType/);
  });

  it('refuses absurd ranks before allocating anything (r up to 1e308 passed, then RangeError; DoRA r=1e6 took 19 s)', () => {
    const before = tf.memory().numTensors;
    for (const r of [1e308, 1e20, 2 ** 53]) expect(configError(() => loraConfig({ r })).field).toBe('r');
    const net = baseNet();
    const t0 = performance.now();
    for (const [r, useDora] of [
      [1e9, false],
      [1e6, true],
      [65, false],
    ] as const) {
      const e = configError(() => getPeftModel(net, { r, useDora, targetModules: ['q_proj'] }));
      expect(e.message).toMatch(/more than the 64 entries of the weight of 'layers.0.q_proj'.*at most 8/);
    }
    expect(
      configError(() => getPeftModel(net, { rankPattern: { q_proj: 1e6 }, targetModules: ['q_proj'] })).field,
    ).toBe('rank_pattern');
    // PEFT takes ranks above min(in, out) (its own tests do): so do we
    getPeftModel(net, { r: 12, targetModules: ['q_proj'] }).unload();
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(configError(() => loraConfig({ initLoraWeights: 'pissa_niter_1000000000' as 'pissa' })).message).toMatch(
      /at most 1000/,
    );
    net.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('adapter_config.json read from a file', () => {
  it('validates lora_alpha (null, "x", {}, ±1e308 loaded and gave NaN/Inf logits)', async () => {
    for (const alpha of [null, 'x', {}, 1e308, -1e308, [8]]) {
      const dir = adapterWith((j) => {
        j.lora_alpha = alpha;
      });
      const net = baseNet();
      const before = tf.memory().numTensors;
      const e = await loadAdapter(net, dir, quiet).catch((err: unknown) => err);
      expect(e).toBeInstanceOf(LoraConfigError);
      expect((e as LoraConfigError).field).toBe('lora_alpha');
      expect((e as Error).message).toContain(join(dir, 'adapter_config.json'));
      expect(tf.memory().numTensors).toBe(before);
      net.dispose();
    }
  });

  it('names field and value for wrong types (they were raw TypeErrors)', () => {
    const cases: [string, unknown, RegExp][] = [
      ['modules_to_save', 'lm_head', /modules_to_save must be a list of module names or null; got "lm_head"/],
      ['layers_pattern', 5, /layers_pattern must be a string, a list of strings, or null; got 5/],
      ['r', '8', /the value passed is "8"/],
      ['rank_pattern', [1], /rank_pattern must be an object/],
      ['alpha_pattern', { mlp: 'x' }, /alpha_pattern\["mlp"\] = "x" must be a finite number/],
      ['target_modules', 5, /target_modules must be a list of module names/],
      ['layers_to_transform', [0, -1], /layers_to_transform must be a layer index/],
      ['lora_dropout', '0.1', /lora_dropout must be a number in \[0, 1\)/],
      ['use_dora', 'yes', /use_dora must be true or false/],
      ['init_lora_weights', 3, /init_lora_weights must be true, false or the name/],
      ['trainable_token_indices', 'x', /trainable_token_indices must be/],
    ];
    for (const [field, value, message] of cases) {
      const json = { ...qvJson(), ...(field === 'layers_pattern' ? { layers_to_transform: [0] } : {}), [field]: value };
      const e = configError(() => loraConfigFromJson(json, { ...quiet, file: 'a/adapter_config.json' }));
      expect([field, e.field]).toEqual([field, field]);
      expect(e.message).toMatch(message);
      expect(e.message.startsWith('a/adapter_config.json: ')).toBe(true);
    }
    // PEFT reads a null pattern dict as none
    expect(loraConfigFromJson({ ...qvJson(), rank_pattern: null, alpha_pattern: null }, quiet).rankPattern).toEqual({});
  });

  it('answers deep nesting with a LoraConfigError, not a stack overflow', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 10_000; i++) deep = [deep];
    expect(configError(() => loraConfigFromJson({ ...qvJson(), extra_field: deep }, quiet)).message).toMatch(
      /nests deeper/,
    );
  });

  it('warns about PEFT fields it does not implement, and about missing and unexpected keys, as PEFT does', async () => {
    const warnings: string[] = [];
    const dir = adapterWith((j) => {
      j.layer_replication = [[0, 2]];
      j.use_qalora = true;
      j.target_parameters = ['mlp.weight'];
      j.alora_invocation_tokens = [1, 2];
      j.target_modules = ['q_proj', 'v_proj', 'mlp'];
    });
    const { model, missingKeys } = await loadAdapter(baseNet(), dir, { warn: (m) => warnings.push(m) });
    expect(warnings[0]).toMatch(
      /sets alora_invocation_tokens = \[1,2\], layer_replication = \[\[0,2\]\], target_parameters = \["mlp.weight"\], use_qalora = true, which this version does not implement/,
    );
    expect(missingKeys.length).toBe(4);
    expect(warnings[1]).toBe(
      `Found missing adapter keys while loading the checkpoint: ${JSON.stringify(missingKeys)}.`,
    );
    model.dispose();
    // unexpected: the file has q_proj and v_proj, the config targets only q_proj
    const warned: string[] = [];
    const only = adapterWith((j) => {
      j.target_modules = ['q_proj'];
    });
    const res = await loadAdapter(baseNet(), only, { warn: (m) => warned.push(m) });
    expect(res.unexpectedKeys.length).toBe(4);
    expect(warned).toEqual([expect.stringMatching(/has keys the model has no place for; they were ignored/)]);
    res.model.dispose();
  });

  it('names the file for invalid JSON and missing files, and calls the folder an adapter directory', async () => {
    const dir = adapterWith(() => undefined);
    writeFileSync(join(dir, 'adapter_config.json'), '{"peft_type": "LORA",');
    const bad = await loadAdapter(baseNet(), dir, quiet).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(AdapterFileError);
    expect((bad as AdapterFileError).file).toBe(join(dir, 'adapter_config.json'));
    expect((bad as Error).message).toMatch(/is not valid JSON/);
    const missing = await loadAdapter(baseNet(), join(dir, 'nope'), quiet).catch((e: unknown) => e);
    expect((missing as Error).message).toMatch(new RegExp(`^${join(dir, 'nope')}: adapter directory does not exist`));
  });
});
