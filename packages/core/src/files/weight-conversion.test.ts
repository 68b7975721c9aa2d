import { cpSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { maxRelativeError } from '@lora/tensor/testing';
import {
  type LoraConfig,
  adapterStateDict,
  getPeftModel,
  loadAdapter,
  loraConfigFromJson,
  saveAdapter,
  serializeAdapter,
} from '@lora/core';
import { FIX, baseNet, readAdapterFiles, readFixture } from '../fixture-nets.test-util';

const notes = JSON.parse(readFileSync(join(FIX, 'pissa-convert-notes.json'), 'utf8'));
const jsonOf = (label: string, dir: string) =>
  JSON.parse(readFileSync(join(FIX, `pissa-convert-${label}`, dir, 'adapter_config.json'), 'utf8'));
/** The adapter's config as PEFT trained it (init 'pissa' / 'olora'), for getPeftModel. */
const trainedConfig = (label: string): LoraConfig => ({
  ...loraConfigFromJson(jsonOf(label, 'trained')),
  inferenceMode: false,
});
/** The config fields a conversion sets, and those it keeps. */
const FIELDS = [
  'r',
  'lora_alpha',
  'rank_pattern',
  'alpha_pattern',
  'init_lora_weights',
  'inference_mode',
  'use_rslora',
  'target_modules',
  'modules_to_save',
];
const pick = (json: Record<string, unknown>) => Object.fromEntries(FIELDS.map((k) => [k, json[k]]));

let want: Record<string, tf.Tensor>;
beforeAll(async () => {
  await initBackend('cpu');
  want = readFixture('pissa-convert-expected.safetensors');
});
afterAll(() => tf.dispose(Object.values(want)));

/** ΔW-shaped products B·A of every LoRA module in a set of adapter tensors (the caller disposes them). */
function products(tensors: Record<string, tf.Tensor>): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const k of Object.keys(tensors)) {
    if (!k.endsWith('.lora_A.weight')) continue;
    const p = k.slice(0, -'.lora_A.weight'.length);
    out[p] = tf.matMul(tensors[`${p}.lora_B.weight`] as tf.Tensor, tensors[k] as tf.Tensor);
  }
  return out;
}

async function outputOf(model: { call(x: tf.Tensor): unknown }): Promise<Float32Array> {
  const y = model.call(want.x as tf.Tensor) as tf.Tensor;
  const data = (await y.data()) as Float32Array;
  y.dispose();
  return data;
}

describe('PiSSA / OLoRA adapters converted to LoRA on save', () => {
  for (const label of ['pissa', 'olora', 'rslora']) {
    it(`${label}: from PEFT's initial and trained adapters, the converted adapter and configs are PEFT's, and base + converted is the trained model`, async () => {
      const before = tf.memory().numTensors;
      const peft = getPeftModel(baseNet(), trainedConfig(label));
      const trained = readAdapterFiles(`pissa-convert-${label}/trained`).tensors;
      for (const [k, v] of Object.entries(adapterStateDict(peft)))
        tf.tidy(() => (v as tf.Variable).assign(trained[k] as tf.Tensor));
      tf.dispose(Object.values(trained));
      // our residual base weights come through our own SVD / QR
      expect(maxRelativeError(await outputOf(peft), await want[`${label}.trained_out`]!.data())).toBeLessThan(1e-4);
      const initialDir = mkdtempSync(join(tmpdir(), 'lora-initial-'));
      cpSync(
        join(FIX, `pissa-convert-${label}`, 'initial', 'adapter_model.safetensors'),
        join(initialDir, 'adapter_model.safetensors'),
      );
      const out = mkdtempSync(join(tmpdir(), 'lora-converted-'));
      const warnings: string[] = [];
      await saveAdapter(peft, out, { pathInitialModelForWeightConversion: initialDir, warn: (m) => warnings.push(m) });
      expect(warnings).toEqual([]);
      peft.dispose();
      expect(tf.memory().numTensors).toBe(before);

      const ours = parseSafetensors(new Uint8Array(readFileSync(join(out, 'adapter_model.safetensors')))).tensors;
      const theirs = readAdapterFiles(`pissa-convert-${label}/converted`).tensors;
      expect(Object.keys(ours).sort()).toEqual(Object.keys(theirs).sort());
      for (const [k, t] of Object.entries(theirs))
        expect(maxRelativeError(await ours[k]!.data(), await t.data()), k).toBe(0);
      tf.dispose([...Object.values(ours), ...Object.values(theirs)]);
      expect(pick(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')))).toEqual(
        pick(jsonOf(label, 'converted')),
      );
      expect(pick(JSON.parse(readFileSync(join(initialDir, 'adapter_config.json'), 'utf8')))).toEqual(
        pick(jsonOf(label, 'initial')),
      );

      const { model: lora } = await loadAdapter(baseNet(), out);
      const y = await outputOf(lora);
      expect(maxRelativeError(y, await want[`${label}.converted_out`]!.data())).toBeLessThan(1e-5);
      expect(maxRelativeError(y, await want[`${label}.trained_out`]!.data())).toBeLessThan(1e-5);
      lora.dispose();
    });

    it(`${label}: in memory, our own init → training → conversion gives PEFT's B'·A' and the trained model's output`, async () => {
      const peft = getPeftModel(baseNet(), trainedConfig(label));
      const initial = await serializeAdapter(peft);
      // the simulated training of the fixture: each factor scaled elementwise (sign choices of the SVD/QR cancel in B·A)
      for (const [n, p] of peft.namedParameters())
        if (n.includes('lora_')) tf.tidy(() => p.assign(tf.mul(p, want[`${label}.factor.${n}`] as tf.Tensor)));
      expect(maxRelativeError(await outputOf(peft), await want[`${label}.trained_out`]!.data())).toBeLessThan(1e-4);
      const before = tf.memory().numTensors;
      const converted = await serializeAdapter(peft, 'default', { initialAdapter: initial });
      expect(tf.memory().numTensors).toBe(before);
      peft.dispose();
      expect(pick(JSON.parse(converted.config))).toEqual(pick(jsonOf(label, 'converted')));
      const ours = parseSafetensors(converted.weights).tensors;
      const theirs = readAdapterFiles(`pissa-convert-${label}/converted`).tensors;
      const [po, pt] = [products(ours), products(theirs)];
      expect(Object.keys(po).sort()).toEqual(Object.keys(pt).sort());
      for (const k of Object.keys(pt))
        expect(maxRelativeError(await po[k]!.data(), await pt[k]!.data()), k).toBeLessThan(1e-4);
      tf.dispose([...Object.values(ours), ...Object.values(theirs), ...Object.values(po), ...Object.values(pt)]);
      const { model: lora } = await loadAdapter(baseNet(), {
        'adapter_config.json': converted.config,
        'adapter_model.safetensors': converted.weights,
      });
      expect(maxRelativeError(await outputOf(lora), await want[`${label}.trained_out`]!.data())).toBeLessThan(1e-4);
      lora.dispose();
    });
  }
});

describe('conversion errors', () => {
  it("rsLoRA with a rank pattern is refused with PEFT's message, before the initial directory is touched", async () => {
    const peft = getPeftModel(baseNet(), {
      r: 2,
      useRslora: true,
      targetModules: ['q_proj'],
      rankPattern: { q_proj: 4 },
      initLoraWeights: 'pissa',
    });
    const dir = mkdtempSync(join(tmpdir(), 'lora-initial-'));
    await saveAdapter(peft, dir);
    const before = readFileSync(join(dir, 'adapter_config.json'), 'utf8');
    await expect(
      saveAdapter(peft, mkdtempSync(join(tmpdir(), 'lora-out-')), { pathInitialModelForWeightConversion: dir }),
    ).rejects.toThrow(notes.rslora_pattern_error);
    expect(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).toBe(before);
    const initial = await serializeAdapter(peft);
    await expect(serializeAdapter(peft, 'default', { initialAdapter: initial })).rejects.toThrow(
      notes.rslora_pattern_error,
    );
    peft.dispose();
  });

  it('a missing initial adapter, one of another rank, and lora_bias are clear errors; a non-PiSSA adapter is warned about', async () => {
    const peft = getPeftModel(baseNet(), { r: 2, targetModules: ['q_proj'], initLoraWeights: 'pissa' });
    const empty = mkdtempSync(join(tmpdir(), 'lora-initial-'));
    await expect(
      saveAdapter(peft, mkdtempSync(join(tmpdir(), 'lora-out-')), { pathInitialModelForWeightConversion: empty }),
    ).rejects.toThrow(
      /adapter_model\.safetensors cannot be read .*save the PiSSA\/OLoRA adapter there right after getPeftModel/,
    );
    expect(existsSync(join(empty, 'adapter_config.json'))).toBe(false);
    const other = getPeftModel(baseNet(), { r: 3, targetModules: ['q_proj'], initLoraWeights: 'pissa' });
    const before = tf.memory().numTensors;
    await expect(serializeAdapter(peft, 'default', { initialAdapter: await serializeAdapter(other) })).rejects.toThrow(
      "the initial adapter's 'base_model.model.layers.0.q_proj.lora_A.weight' has shape [3, 8] but the trained one [2, 8]; the initial adapter must come from the same config",
    );
    expect(tf.memory().numTensors).toBe(before);
    other.dispose();
    peft.dispose();
    const biased = getPeftModel(baseNet(), { r: 2, targetModules: ['q_proj'], loraBias: true });
    const warnings: string[] = [];
    const initial = await serializeAdapter(biased);
    await expect(
      serializeAdapter(biased, 'default', { initialAdapter: initial, warn: (m) => warnings.push(m) }),
    ).rejects.toThrow(/lora_B\.bias' \(lora_bias\) cannot be converted/);
    biased.dispose();
    const plain = getPeftModel(baseNet(), { r: 2, targetModules: ['q_proj'], initLoraWeights: false });
    await serializeAdapter(plain, 'default', {
      initialAdapter: await serializeAdapter(plain),
      warn: (m) => warnings.push(m),
    });
    expect(warnings).toEqual([
      '`path_initial_model_for_weight_conversion` only works for converting a PiSSA/CorDA/OLoRA/LoRA-GA adapter to a LoRA adapter',
    ]);
    plain.dispose();
  });
});
