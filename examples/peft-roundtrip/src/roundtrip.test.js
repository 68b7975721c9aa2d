// @ts-check
// Both directions against what Python PEFT 0.21 recorded (no Python runs here): the adapters PEFT
// trained give PEFT's outputs here, and the adapters trained here (seeded) give what PEFT computed
// when python/check_from_js.py loaded them.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '@lora/tensor';
import { checkJsAdapter, checkPeftAdapter } from './check.js';
import { SETTINGS, expectedDir, loadData } from './roundtrip.js';

/** float32 on both sides, the same math (bf16 weights upcast exactly): DESIGN.md's parity bound. */
const TOLERANCE = 1e-5;
/** @type {Awaited<ReturnType<typeof loadData>>} */
let data;
beforeAll(async () => {
  await initBackend('wasm');
  data = await loadData();
});

const cases = Object.keys(SETTINGS.cases);
/** What python/check_from_js.py recorded (committed). */
const recorded = JSON.parse(await readFile(join(expectedDir, 'python-on-js.json'), 'utf8'));

describe('PEFT → @lora: adapters PEFT trained and saved, loaded here', () => {
  it.each(cases)('peft-%s gives the outputs PEFT recorded', async (name) => {
    const before = tf.memory().numTensors;
    const r = await checkPeftAdapter(name, data.probe);
    for (const [k, e] of Object.entries(r.baseErrors)) expect(e, `base ${k}`).toBeLessThan(TOLERANCE);
    for (const [k, e] of Object.entries(r.errors)) expect(e, `peft-${name} ${k}`).toBeLessThan(TOLERANCE);
    // the adapter is really in the forward pass: the probe moved from the base's
    expect(r.loss.adapted).toBeLessThan(/** @type {number} */ (r.loss.base) - 0.05);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('@lora → PEFT: adapters trained here, as PEFT computed with them', () => {
  it.each(cases)('js-%s, retrained with the same seed, gives what PEFT computed with it', async (name) => {
    // python/check_from_js.py must have recorded every case of roundtrip.json
    expect(
      recorded.cases[name],
      `expected/python-on-js.json has no '${name}': run python/check_from_js.py`,
    ).toBeDefined();
    const before = tf.memory().numTensors;
    const r = await checkJsAdapter(name, data);
    expect(r.losses).toHaveLength(SETTINGS.training.steps);
    for (const [k, e] of Object.entries(/** @type {Record<string, number>} */ (r.errors)))
      expect(e, `js-${name} ${k}`).toBeLessThan(TOLERANCE);
    // and PEFT found the adapter to matter: its probe loss is below the base's
    expect(recorded.cases[name].peft_loss).toBeLessThan(3.3);
    tf.dispose(Object.values(r.ours));
    r.peft.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});
