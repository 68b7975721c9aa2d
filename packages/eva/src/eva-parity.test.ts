/**
 * Parity with PEFT 0.21's EVA on the EvaNet fixtures (tools/oracle/eva_fixtures.py): the state dict's
 * keys and shapes, every component within |cos| ≥ 0.99 of PEFT's (signs are free), the adapter's
 * rank_pattern / alpha_pattern / target_modules and scalings after initialize_lora_eva_weights, and the
 * number of batches each layer's incremental PCA used.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type LoraConfig, getPeftModel, loraConfigFromJson, saveAdapter } from '@lora/core';
import { parseSafetensors } from '@lora/tensor';
import { beforeAll, describe, expect, it } from 'vitest';
import { FIX, evaBatches, evaNet, readFixture, readJson, startTestBackend } from './eva-nets.test-util';
import { type EvaReport, getEvaStateDict, initializeLoraEvaWeights } from './index';
import type { IpcaPrecision } from './incremental-pca';
import { factorsOnBackend } from './small-factor';

interface CaseResult {
  lora: Record<string, unknown>;
  eva: Record<string, unknown>;
  labels: boolean;
  keys: string[];
  shapes: Record<string, [number, number]>;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  target_modules: string[];
  updates: Record<string, number>;
  scaling: Record<string, number>;
}

const CASES = ['rho2', 'rho1', 'whiten', 'labels', 'patterns', 'embedding'] as const;
const PREFIX = 'base_model.model.';

function caseConfig(r: CaseResult): LoraConfig {
  return loraConfigFromJson({ peft_type: 'LORA', init_lora_weights: 'eva', ...r.lora, eva_config: r.eva });
}

/** |cos| of each row of a with the same row of b. */
async function rowCosines(a: tf.Tensor2D, b: tf.Tensor2D): Promise<number[]> {
  const [x, y] = [await a.array(), await b.array()];
  return x.map((row, i) => {
    const other = y[i] as number[];
    let xy = 0;
    let xx = 0;
    let yy = 0;
    for (let j = 0; j < row.length; j++) {
      xy += (row[j] as number) * (other[j] as number);
      xx += (row[j] as number) ** 2;
      yy += (other[j] as number) ** 2;
    }
    return Math.abs(xy) / Math.sqrt(xx * yy);
  });
}

const norms = async (t: tf.Tensor2D) => (await t.array()).map((r) => Math.hypot(...r));

/** The equal-input groups of the EvaNet: the members after the first of q/k/v and gate/up. */
const MEMBERS = /\.(k_proj|v_proj|up_proj)$/;

beforeAll(async () => {
  await startTestBackend();
});

describe('getEvaStateDict matches PEFT 0.21 on the EvaNet fixtures', () => {
  for (const name of CASES) {
    it(`${name}: keys, shapes and components (|cos| ≥ 0.99), plain model and PeftModel alike`, async () => {
      const r = readJson<CaseResult>(`${name}/result.json`);
      const expected = readFixture(`${name}/eva_state_dict.safetensors`) as Record<string, tf.Tensor2D>;
      const batches = evaBatches(r.labels);
      const before = tf.memory().numTensors;
      const net = evaNet();
      const sd = await getEvaStateDict(net, batches, { peftConfig: caseConfig(r), progressBar: false });
      expect(Object.keys(sd)).toEqual(r.keys.map((k) => k.slice(PREFIX.length)));
      for (const key of r.keys) {
        const ours = sd[key.slice(PREFIX.length)] as tf.Tensor2D;
        const theirs = expected[key] as tf.Tensor2D;
        expect(ours.shape, key).toEqual(r.shapes[key]);
        if (ours.shape[0] === 0) continue;
        for (const c of await rowCosines(ours, theirs)) expect(c, key).toBeGreaterThan(0.99);
        if (r.eva.whiten !== true) for (const n of await norms(ours)) expect(n).toBeCloseTo(1, 5);
        // whitened rows are the unit components over √(singular value); PEFT divides the rows its
        // equal-input layers share once per member (an in-place division on a shared view), so only
        // the layers without a group have PEFT's norms
        else if (!MEMBERS.test(key) && !/\.(q_proj|gate_proj)$/.test(key)) {
          const [a, b] = [await norms(ours), await norms(theirs)];
          for (let i = 0; i < a.length; i++) expect((a[i] as number) / (b[i] as number)).toBeCloseTo(1, 2);
        }
      }
      tf.dispose(Object.values(sd));
      net.dispose();
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose(Object.values(expected));
      tf.dispose(batches.flatMap((b) => Object.values(b)));
    });
  }
});

describe('initializeLoraEvaWeights matches PEFT 0.21 on the EvaNet fixtures', () => {
  for (const name of CASES)
    for (const mode of ['float32', 'float32, q×q on the backend', 'float64'] as const) {
      const precision: IpcaPrecision = mode === 'float64' ? 'float64' : 'float32';
      if (precision === 'float64' && name !== 'rho2' && name !== 'labels') continue;
      // the q×q factorisations on the backend (webgpu's default) run on cpu and webgpu only:
      // LORA_EVA_BACKEND=cpu or webgpu runs these cases (the default wasm has no such path)
      const factorOnBackend = mode === 'float32, q×q on the backend';
      it(`${name} (${mode}): rank and alpha patterns, target modules, scalings, A rows, B = 0, saved files`, async (ctx) => {
        if (factorOnBackend && !factorsOnBackend()) ctx.skip();
        const r = readJson<CaseResult>(`${name}/result.json`);
        const batches = evaBatches(r.labels);
        const peft = getPeftModel(evaNet(), caseConfig(r));
        const warnings: string[] = [];
        let report: EvaReport | undefined;
        const result = await initializeLoraEvaWeights(peft, batches, {
          progressBar: false,
          precision,
          factorOnBackend: precision === 'float32' ? factorOnBackend : undefined,
          warn: (m) => warnings.push(m),
          onComplete: (rep) => {
            report = rep;
          },
        });
        // the same trajectory: each hook layer's PCA used as many batches as PEFT's (float64: PEFT's
        // arithmetic exactly; float32: the same convergence decisions despite the rounding)
        expect(report?.updates).toEqual(
          Object.fromEntries(Object.entries(r.updates).map(([k, v]) => [`${PREFIX}${k}`, v])),
        );
        const config = peft.peftConfig.get('default') as LoraConfig;
        expect(config.rankPattern).toEqual(r.rank_pattern);
        expect(config.alphaPattern).toEqual(r.alpha_pattern);
        expect(config.targetModules).toEqual(
          JSON.parse(readFileSync(join(FIX, name, 'adapter', 'adapter_config.json'), 'utf8')).target_modules,
        );
        for (const [path, layer] of peft.loraLayers()) {
          expect(layer.scaling.get('default'), path).toBeCloseTo(r.scaling[path] as number, 12);
        }
        // the forward of the base model is unchanged (B = 0), and PEFT's A rows are ours up to sign
        const saved = parseSafetensors(
          new Uint8Array(readFileSync(join(FIX, name, 'adapter', 'adapter_model.safetensors'))),
        ).tensors as Record<string, tf.Tensor2D>;
        for (const [path, layer] of peft.loraLayers()) {
          const A = layer.factorA('default') as tf.Tensor as tf.Tensor2D;
          const theirs =
            saved[
              `${PREFIX}${path}.lora_${layer.kind === 'embedding' ? 'embedding_' : ''}A${layer.kind === 'embedding' ? '' : '.weight'}`
            ];
          expect(A.shape, path).toEqual(theirs?.shape);
          if (layer.kind === 'linear')
            for (const c of await rowCosines(A, theirs as tf.Tensor2D)) expect(c, path).toBeGreaterThan(0.99);
          const B = layer.factorB('default');
          if (layer.kind === 'linear') expect(await tf.max(tf.abs(B)).data()).toEqual(new Float32Array([0]));
        }
        if (name === 'embedding') {
          expect(result.defaultInitialized).toEqual(['embed']);
          expect(
            warnings.some((w) => w.includes('initialized with init_lora_weights=True') && w.includes('embed')),
          ).toBe(true);
        }
        // the same files as PEFT's save_pretrained: keys, shapes, and the config fields EVA rewrote
        const dir = mkdtempSync(join(tmpdir(), 'eva-'));
        try {
          await saveAdapter(peft, dir, { warn: () => {} });
          const ours = parseSafetensors(new Uint8Array(readFileSync(join(dir, 'adapter_model.safetensors')))).tensors;
          expect(Object.fromEntries(Object.entries(ours).map(([k, v]) => [k, v.shape]))).toEqual(
            Object.fromEntries(Object.entries(saved).map(([k, v]) => [k, v.shape])),
          );
          const json = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
          const peftJson = JSON.parse(readFileSync(join(FIX, name, 'adapter', 'adapter_config.json'), 'utf8'));
          for (const field of ['rank_pattern', 'alpha_pattern', 'r', 'lora_alpha', 'init_lora_weights', 'eva_config'])
            expect(json[field], field).toEqual(peftJson[field]);
          // a set for PEFT once loaded; our writer lists it sorted
          expect([...json.target_modules].sort()).toEqual([...peftJson.target_modules].sort());
          tf.dispose(Object.values(ours));
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
        tf.dispose(Object.values(saved));
        tf.dispose(batches.flatMap((b) => Object.values(b)));
        peft.dispose();
      });
    }
});
