import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  LoraConfigError,
  arrowConfig,
  evaConfig,
  loftqConfig,
  loraConfig,
  loraConfigFromJson,
  loraConfigToJson,
  loraGaConfig,
} from '@lora/core';

const FIX = join(import.meta.dirname, '..', '__fixtures__', 'method-configs');
const peftText = (name: string) => readFileSync(join(FIX, name, 'adapter_config.json'), 'utf8');

/** The text of one top-level field of a pretty-printed adapter_config.json, as written. */
function fieldText(json: string, key: string): string {
  const start = json.indexOf(`\n  "${key}": `);
  if (start < 0) throw new Error(`no field ${key}`);
  const rest = json.slice(start + 1);
  const end = rest.slice(1).search(/\n {2}"|\n\}/);
  return rest.slice(0, end + 1).replace(/,$/, '');
}

const METHOD_KEYS = ['loftq_config', 'eva_config', 'lora_ga_config', 'arrow_config'];

afterEach(() => vi.restoreAllMocks());

describe("method sub-configs in PEFT's adapter_config.json", () => {
  for (const [name, typed] of [
    ['loftq', { loftqConfig: { loftqBits: 2, loftqIter: 3 } }],
    [
      'eva',
      {
        evaConfig: {
          rho: 1.5,
          tau: 0.9,
          useLabelMask: false,
          labelMaskValue: -1,
          whiten: true,
          adjustScalingFactors: false,
        },
      },
    ],
    [
      'eva-default',
      {
        evaConfig: {
          rho: 2,
          tau: 0.99,
          useLabelMask: true,
          labelMaskValue: -100,
          whiten: false,
          adjustScalingFactors: true,
        },
      },
    ],
    ['lora-ga', { loraGaConfig: { direction: 'A2rBr', scale: 'weight_svd', stableGamma: 8 } }],
    [
      'arrow',
      {
        arrowConfig: {
          topK: 2,
          routerTemperature: 0.5,
          useGks: true,
          taskAdapterNames: ['task_0', 'task_1', 'task_2'],
          gksAdapterNames: ['gks_0'],
          rngSeed: 7,
        },
      },
    ],
  ] as const) {
    it(`${name}: PEFT's file reads into the typed config and is written back byte for byte in the method fields`, () => {
      const text = peftText(name);
      const warnings: string[] = [];
      const config = loraConfigFromJson(JSON.parse(text), { warn: (m) => warnings.push(m) });
      // an Arrow router runs through @lora/arrow's variant, which is not registered here
      expect(warnings).toEqual(
        name === 'arrow'
          ? [
              'adapter_config.json sets arrow_config (an Arrow router), which needs @lora/arrow: import it before loading, or the adapter runs as plain LoRA',
            ]
          : [],
      );
      expect(config).toMatchObject(typed);
      const written = loraConfigToJson(config);
      for (const key of METHOD_KEYS) expect(fieldText(written, key), key).toBe(fieldText(text, key));
      // the rest as PEFT wrote it too (PeftConfig.save_pretrained writes inference_mode as set; adapters are saved with true)
      expect({ ...JSON.parse(written), inference_mode: false }).toEqual(JSON.parse(text));
      // and back again: the typed config survives its own file
      expect({ ...loraConfigFromJson(JSON.parse(written), { warn: () => {} }), inferenceMode: false }).toEqual(config);
    });
  }

  it('camelCase in TypeScript to snake_case in the file and back, partial sub-configs filled with PEFT defaults', () => {
    const c = loraConfig({
      targetModules: ['q_proj'],
      arrowConfig: { topK: 1 },
      loraGaConfig: { scale: 'unit' },
    });
    expect(c.arrowConfig).toEqual(arrowConfig({ topK: 1 }));
    expect(c.arrowConfig).toEqual({
      topK: 1,
      routerTemperature: 1,
      useGks: false,
      taskAdapterNames: null,
      gksAdapterNames: null,
      rngSeed: null,
    });
    expect(c.loraGaConfig).toEqual({ direction: 'ArB2r', scale: 'unit', stableGamma: 16 });
    const json = JSON.parse(loraConfigToJson(c));
    expect(json.arrow_config).toEqual({
      top_k: 1,
      router_temperature: 1,
      use_gks: false,
      task_adapter_names: null,
      gks_adapter_names: null,
      rng_seed: null,
    });
    expect(fieldText(loraConfigToJson(c), 'arrow_config')).toContain('"router_temperature": 1.0,');
    expect(json.loftq_config).toEqual({});
    expect(json.eva_config).toBeNull();
    // files are written for inference, with auto_mapping, as PEFT's
    expect(loraConfigFromJson(json)).toEqual({ ...c, inferenceMode: true, extra: { auto_mapping: null } });
  });

  it("checks each sub-config as PEFT does, with PEFT's wording, and the types of its fields", () => {
    expect(() => evaConfig({ rho: 0.5 })).toThrow(new LoraConfigError('`rho` must be >= 1.0'));
    expect(() => evaConfig({ tau: 1.5 })).toThrow('`tau` must be between 0.0 and 1.0.');
    expect(() => arrowConfig({ topK: 0 })).toThrow('top_k cannot be negative.');
    expect(() => arrowConfig({ routerTemperature: 0 })).toThrow('router_temperature must be greater than 0.');
    expect(() => loftqConfig({ loftqBits: 4.5 })).toThrow(
      'loftq_config.loftq_bits must be an integer, got 4.5 (LoftQConfig',
    );
    expect(() => loraGaConfig({ direction: 'AB' as 'ArBr' })).toThrow(
      "lora_ga_config.direction must be one of 'ArBr', 'A2rBr', 'ArB2r', 'random', got \"AB\"",
    );
    expect(() => loraConfig({ evaConfig: { rhoo: 2 } as never })).toThrow(
      "evaConfig has no field 'rhoo'; its fields are rho, tau,",
    );
    expect(() => loraConfigFromJson({ peft_type: 'LORA', eva_config: 3 })).toThrow(
      '`EvaConfig` must be a `EvaConfig`, a dict, or None.',
    );
    // PEFT's LoraConfig.__post_init__: loftq needs its config; a config that is not used is dropped or warned about
    expect(() => loraConfig({ initLoraWeights: 'loftq' })).toThrow(
      "`loftq_config` must be specified when `init_lora_weights` is 'loftq'.",
    );
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => {});
    expect(loraConfig({ loftqConfig: { loftqBits: 8 } }).loftqConfig).toBeNull();
    expect(warn).toHaveBeenLastCalledWith(
      "`loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'.",
    );
    expect(loraConfig({ initLoraWeights: 'eva' }).evaConfig).toEqual(evaConfig());
    expect(warn).toHaveBeenLastCalledWith(
      "`init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config.",
    );
    expect(loraConfig({ evaConfig: { rho: 3 } }).evaConfig?.rho).toBe(3);
    expect(warn).toHaveBeenLastCalledWith(
      "`eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'.",
    );
  });

  it('keeps keys a newer PEFT adds to a sub-config, with a warning, and writes them back', () => {
    const json = JSON.parse(peftText('lora-ga'));
    json.lora_ga_config.brand_new = [1, 2];
    const messages: string[] = [];
    const c = loraConfigFromJson(json, { warn: (m) => messages.push(m) });
    expect(messages).toEqual([
      'adapter_config.json has keys this version does not know; they are kept and written back: lora_ga_config.brand_new',
    ]);
    expect(c.loraGaConfig?.extra).toEqual({ brand_new: [1, 2] });
    expect(JSON.parse(loraConfigToJson(c)).lora_ga_config).toEqual(json.lora_ga_config);
  });
});
