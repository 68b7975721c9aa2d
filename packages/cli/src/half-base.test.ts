// LoRA over a model loaded with 16-bit weight storage (@lora/models' weightStorage: 'checkpoint'):
// here because it needs both @lora/models and @lora/core.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, loadAdapter, serializeAdapter } from '@lora/core';
import { reduceIntruderDimension } from '@lora/intruders';
import { LlamaForCausalLM } from '@lora/models';
import { AdamW, HalfEmbedding, HalfLinear, type Module, isStoredWeightLayer } from '@lora/nn';
import { initBackend, parseSafetensors, readSafetensorsHeader } from '@lora/tensor';
import { beforeAll, describe, expect, it } from 'vitest';

const MODELS = join(import.meta.dirname, '..', '..', 'models', '__fixtures__');
const CACHE = join(import.meta.dirname, '..', '..', 'tensor', '__fixtures__', 'hf-cache');
const offline = { cacheDir: CACHE, localFilesOnly: true };
const REPO = 'lora-test/tiny-llama-bf16';
/** Written by tools/oracle/half_merge_fixtures.py: PEFT 0.21 merging a LoRA into the bf16 model. */
const MERGE = join(MODELS, 'half-merge');
const oracle = () => parseSafetensors(new Uint8Array(readFileSync(join(MERGE, 'merged.safetensors')))).tensors;

beforeAll(async () => {
  await initBackend('cpu');
});

/** Every weight of a model as float32, decoded where it is stored 16-bit. The caller disposes them. */
function weights(model: Module): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [path, m] of model.namedModules()) {
    for (const [name, p] of m.namedParameters('', false)) {
      const key = path ? `${path}.${name}` : name;
      out[key] = isStoredWeightLayer(m) && name === 'weight' ? m.decodeWeight() : tf.clone(p);
    }
  }
  return out;
}

function differingBits(a: Float32Array, b: Float32Array): number {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let n = 0;
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) n++;
  return n;
}

describe('LoRA over a bf16 checkpoint kept 16-bit', () => {
  for (const safeMerge of [false, true]) {
    it(`mergeAndUnload${safeMerge ? ' (safe)' : ''} gives PEFT's merged bf16 weights bit for bit, still stored bf16`, async () => {
      const want = oracle();
      const base = await LlamaForCausalLM.fromPretrained(REPO, { ...offline, weightStorage: 'checkpoint' });
      expect(base.model.layers.at(0).selfAttn.qProj).toBeInstanceOf(HalfLinear);
      expect(base.model.embedTokens).toBeInstanceOf(HalfEmbedding);
      const before = tf.memory().numTensors;
      const { model: peft } = await loadAdapter(base, join(MERGE, 'adapter'));
      const merged = safeMerge ? await peft.mergeAndUnload({ safeMerge: true }) : peft.mergeAndUnload();
      expect((merged as LlamaForCausalLM).model.layers.at(1).mlp.downProj).toBeInstanceOf(HalfLinear);
      const tag = safeMerge ? 'safe' : 'plain';
      const got = weights(merged);
      let changed = 0;
      for (const [name, w] of Object.entries(got)) {
        const expected = want[`${tag}.${name}`] as tf.Tensor;
        expect(expected, name).toBeDefined();
        const bits = differingBits((await w.data()) as Float32Array, (await expected.data()) as Float32Array);
        expect(bits, name).toBe(0);
        if (
          differingBits(
            (await w.data()) as Float32Array,
            (await (want[`base.${name}`] as tf.Tensor).data()) as Float32Array,
          )
        )
          changed++;
      }
      expect(changed).toBe(7); // q, v, down of two layers, and the embedding
      // saved as transformers saves the bf16 model: every tensor BF16, PEFT's merged values bit for bit
      const file = await (merged as LlamaForCausalLM).serializeCheckpoint();
      const saved = readSafetensorsHeader(file).entries;
      expect(new Set(saved.map((e) => e.dtype))).toEqual(new Set(['BF16']));
      expect(saved.length).toBe(Object.keys(got).length);
      const back = parseSafetensors(file).tensors;
      for (const [name, t] of Object.entries(back))
        expect(
          differingBits(
            (await t.data()) as Float32Array,
            (await (want[`${tag}.${name}`] as tf.Tensor).data()) as Float32Array,
          ),
          name,
        ).toBe(0);
      tf.dispose(Object.values(back));
      tf.dispose([...Object.values(got), ...Object.values(want)]);
      merged.dispose();
      expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    });
  }

  it('trains: gradients reach only the adapters, the stored codes stay, nothing leaks; saves in PEFT format', async () => {
    const base = await LlamaForCausalLM.fromPretrained(REPO, { ...offline, weightStorage: 'checkpoint' });
    const float = await LlamaForCausalLM.fromPretrained(REPO, offline);
    const config = {
      r: 4,
      loraAlpha: 8,
      targetModules: ['q_proj', 'v_proj', 'down_proj'],
      initLoraWeights: false as const,
    };
    const { manualSeed } = await import('@lora/nn');
    const codes = tf.clone(base.model.layers.at(0).selfAttn.qProj.weight);
    manualSeed(3);
    const peft = getPeftModel(base, config);
    manualSeed(3);
    const peftFloat = getPeftModel(float, config);
    const ids = tf.tensor2d([[1, 5, 9, 17, 33, 2, 60, 7]], [1, 8], 'int32');
    const trainable = [...peft.namedParameters()].filter(([, p]) => p.trainable);
    expect(trainable.every(([n]) => n.includes('lora_'))).toBe(true);
    const opt = new AdamW(
      trainable.map(([, p]) => p),
      { lr: 1e-2 },
    );
    // a first forward builds each model's RoPE rows for these positions (kept, as buffers)
    for (const m of [peft, peftFloat]) tf.dispose((m.forward(ids) as { logits: tf.Tensor }).logits);
    const before = tf.memory().numTensors;
    // the same adapter over the float32-loaded model: the same loss (the weights are the same numbers)
    const lossOf = (m: typeof peft) => () =>
      (m.forward(ids, { labels: ids, returnLogits: false }) as { loss: tf.Scalar }).loss;
    const { value, grads } = tf.variableGrads(lossOf(peft));
    const { value: valueFloat, grads: gradsFloat } = tf.variableGrads(lossOf(peftFloat));
    expect(Math.abs(((await value.data())[0] as number) - ((await valueFloat.data())[0] as number))).toBeLessThan(1e-6);
    expect(Object.keys(grads).length).toBe(trainable.length);
    const names = new Set(trainable.map(([, p]) => p.name));
    for (const k of Object.keys(grads)) expect(names.has(k), k).toBe(true);
    opt.step(grads);
    tf.dispose([value, valueFloat, ...Object.values(grads), ...Object.values(gradsFloat)]);
    expect(tf.memory().numTensors).toBe(before + 2 * trainable.length); // AdamW's two moments
    const qProj = peft.model.getSubmodule('model.layers.0.self_attn.q_proj.base_layer') as HalfLinear;
    const still = tf.tidy(() => tf.all(tf.equal(codes, qProj.weight)));
    expect((await still.data())[0]).toBe(1);
    still.dispose();
    const { weights: file } = await serializeAdapter(peft);
    const header = readSafetensorsHeader(file);
    const keys = header.entries.map((e) => e.name).sort();
    expect(keys).toContain('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect(keys.every((k) => k.includes('.lora_'))).toBe(true);
    expect(new Set(header.entries.map((e) => e.dtype))).toEqual(new Set(['F32']));
    tf.dispose([ids, codes]);
    opt.dispose();
    peft.dispose();
    peftFloat.dispose();
  });

  it('refuses DoRA and base-rewriting initialisations over a 16-bit base, saying what to do', async () => {
    const base = await LlamaForCausalLM.fromPretrained(REPO, { ...offline, weightStorage: 'checkpoint' });
    expect(() => getPeftModel(base, { r: 4, targetModules: ['q_proj'], useDora: true })).toThrow(
      /DoRA over a base stored in bf16 is not supported here \('model.layers.0.self_attn.q_proj' \(HalfLinear, bf16\)\): load the model with weightStorage: 'float32'/,
    );
    expect(() => getPeftModel(base, { r: 4, targetModules: ['q_proj'], initLoraWeights: 'pissa' })).toThrow(
      /init_lora_weights='pissa' reads or rewrites the base weight.*weightStorage: 'float32'/,
    );
    base.dispose();
  });

  it('refuses what would read the packed codes as float weights, naming the layer and the fix', async () => {
    const base = await LlamaForCausalLM.fromPretrained(REPO, { ...offline, weightStorage: 'checkpoint' });
    const before = tf.memory().numTensors;
    expect(() => getPeftModel(base, { r: 4, targetModules: ['q_proj'], trainableTokenIndices: [1, 2] })).toThrow(
      /trainable_token_indices for adapter 'default' needs the base weight as float32, but this HalfEmbedding keeps it encoded \(bf16\): load the model with weightStorage: 'float32'/,
    );
    expect(() => getPeftModel(base, { r: 4, targetModules: ['q_proj'], modulesToSave: ['o_proj'] })).toThrow(
      /modules_to_save needs the base weight as float32, but this HalfLinear keeps it encoded \(bf16\)/,
    );
    // the rank check sees the layer's float shape, not the packed words' [out, in / 2]
    const q = base.model.layers.at(0).selfAttn.qProj as HalfLinear;
    const entries = q.outFeatures * q.inFeatures;
    expect(() => getPeftModel(base, { r: entries + 1, targetModules: ['q_proj'] })).toThrow(
      new RegExp(`more than the ${entries} entries of the weight .*\\[${q.outFeatures}, ${q.inFeatures}\\]`),
    );
    expect(tf.memory().numTensors).toBe(before);
    const peft = getPeftModel(base, { r: 4, targetModules: ['q_proj'] });
    await expect(reduceIntruderDimension(peft)).rejects.toThrow(
      /reduceIntruderDimension on 'model.layers.0.self_attn.q_proj' needs the base weight as float32.*weightStorage: 'float32'/,
    );
    peft.dispose();
  });

  it("saves a targeted 16-bit embedding's base weight in bf16, as PEFT's save_embedding_layers", async () => {
    const base = await LlamaForCausalLM.fromPretrained(REPO, { ...offline, weightStorage: 'checkpoint' });
    const { model: peft } = await loadAdapter(base, join(MERGE, 'adapter'));
    const { weights: file } = await serializeAdapter(peft);
    const ours = readSafetensorsHeader(file).entries;
    const theirs = readSafetensorsHeader(
      new Uint8Array(readFileSync(join(MERGE, 'adapter', 'adapter_model.safetensors'))),
    ).entries;
    const summary = (es: typeof ours) => es.map((e) => `${e.name} ${e.dtype} [${e.shape.join(',')}]`).sort();
    expect(summary(ours)).toEqual(summary(theirs));
    const a = parseSafetensors(file).tensors;
    const b = parseSafetensors(
      new Uint8Array(readFileSync(join(MERGE, 'adapter', 'adapter_model.safetensors'))),
    ).tensors;
    for (const k of Object.keys(b))
      expect(differingBits((await a[k]!.data()) as Float32Array, (await b[k]!.data()) as Float32Array), k).toBe(0);
    tf.dispose([...Object.values(a), ...Object.values(b)]);
    peft.dispose();
  });
});
