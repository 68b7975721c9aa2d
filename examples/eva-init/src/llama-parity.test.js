// @ts-check
// EVA on a tiny transformers LlamaForCausalLM against PEFT 0.21 (tools/oracle/eva_llama_fixtures.py):
// fixed batches, rho 1 and 2, whitening, a label-masked case. The state dict's keys and shapes are
// PEFT's, every component within |cos| ≥ 0.99 of PEFT's, rank_pattern and alpha_pattern identical, and
// each layer's incremental PCA used as many batches. With LORA_EVA_SAVE_DIR set, the adapters are also
// saved there for tools/oracle/check_eva_loads.py (PEFT loads them at their ranks).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, saveAdapter } from '@lora/core';
import { getEvaStateDict, initializeLoraEvaWeights } from '@lora/eva';
import { LlamaForCausalLM } from '@lora/models';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { beforeAll, describe, expect, it } from 'vitest';

const FIX = join(import.meta.dirname, '..', 'fixtures');
const ALL = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
/** @param {string} f */
const tensors = (f) => parseSafetensors(new Uint8Array(readFileSync(join(FIX, f)))).tensors;
/** @param {string} f */
const json = (f) => JSON.parse(readFileSync(join(FIX, f), 'utf8'));

/** @param {boolean} labels */
function batches(labels) {
  const t = tensors('batches.safetensors');
  return Array.from({ length: 5 }, (_, i) => ({
    inputIds: t[`input_ids.${i}`],
    attentionMask: t[`attention_mask.${i}`],
    ...(labels ? { labels: t[`labels.${i}`] } : {}),
  }));
}

/** |cos| of matching rows. @param {tf.Tensor} a @param {tf.Tensor} b */
async function absCos(a, b) {
  const x = /** @type {number[][]} */ (await a.array());
  const y = /** @type {number[][]} */ (await b.array());
  return x.map((row, i) => {
    const o = /** @type {number[]} */ (y[i]);
    let xy = 0;
    let xx = 0;
    let yy = 0;
    row.forEach((v, j) => {
      xy += v * (o[j] ?? 0);
      xx += v * v;
      yy += (o[j] ?? 0) ** 2;
    });
    return Math.abs(xy) / Math.sqrt(xx * yy);
  });
}

beforeAll(async () => {
  try {
    await initBackend('wasm');
  } catch {
    await initBackend('cpu');
  }
});

describe('EVA on a tiny Llama matches PEFT 0.21', () => {
  for (const name of ['rho2', 'rho1', 'whiten', 'labels']) {
    it(name, async () => {
      const r = json(`${name}/result.json`);
      const data = batches(r.labels);
      const model = await LlamaForCausalLM.fromPretrained(join(FIX, 'tiny-llama'));
      const peft = getPeftModel(model, {
        r: 4,
        loraAlpha: 8,
        targetModules: ALL,
        initLoraWeights: 'eva',
        evaConfig: r.eva,
      });
      const expected = tensors(`${name}/eva_state_dict.safetensors`);
      // the state dict of the PeftModel: PEFT's keys (base_model.model.model.layers…), shapes and components
      /** @type {import('@lora/eva').EvaReport | undefined} */
      let report;
      const sd = await getEvaStateDict(peft, data, { progressBar: false, onComplete: (rep) => (report = rep) });
      expect(Object.keys(sd)).toEqual(r.keys);
      for (const key of r.keys) {
        expect(sd[key]?.shape, key).toEqual(r.shapes[key]);
        for (const c of await absCos(/** @type {tf.Tensor} */ (sd[key]), /** @type {tf.Tensor} */ (expected[key])))
          expect(c, key).toBeGreaterThan(0.99);
      }
      // initialised from it: PEFT's patterns; and PEFT's update counts
      await initializeLoraEvaWeights(peft, null, { evaStateDict: sd });
      const config = peft.peftConfig.get('default');
      expect(config?.rankPattern).toEqual(r.rank_pattern);
      expect(config?.alphaPattern).toEqual(r.alpha_pattern);
      expect([.../** @type {string[]} */ (config?.targetModules ?? [])].sort()).toEqual(r.target_modules);
      expect(report?.updates).toEqual(
        Object.fromEntries(Object.entries(r.updates).map(([k, v]) => [`base_model.model.${k}`, v])),
      );
      // the saved adapter has PEFT's keys and shapes
      const keep = process.env.LORA_EVA_SAVE_DIR;
      const dir = keep ? join(keep, name) : mkdtempSync(join(tmpdir(), 'eva-llama-'));
      try {
        await saveAdapter(peft, dir, { warn: () => {} });
        const ours = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'adapter_model.safetensors')))).tensors;
        const theirs = tensors(`${name}/adapter/adapter_model.safetensors`);
        const shapes = (/** @type {Record<string, tf.Tensor>} */ t) =>
          Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.shape]));
        expect(shapes(ours)).toEqual(shapes(theirs));
        tf.dispose([...Object.values(ours), ...Object.values(theirs)]);
      } finally {
        if (!keep) rmSync(dir, { recursive: true, force: true });
      }
      tf.dispose([...Object.values(sd), ...Object.values(expected), ...data.flatMap((b) => Object.values(b))]);
      peft.dispose();
    });
  }
});
