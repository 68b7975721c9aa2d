// @ts-check
// The two checks, as functions: main.js prints them, the test asserts them.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadAdapter } from '@lora/core';
import { maxRelativeError } from '@lora/tensor';
import { expectedDir, loadBase, probe, readProbe, trainInJs } from './roundtrip.js';

/**
 * Max relative error of each probe output (`loss`, `logprobs`, `last`) of `ours` against `theirs`.
 * @param {import('./roundtrip.js').Probe} ours
 * @param {import('./roundtrip.js').Probe} theirs
 */
export async function compareProbes(ours, theirs) {
  /** @type {Record<string, number>} */
  const errors = {};
  for (const k of /** @type {const} */ (['loss', 'logprobs', 'last']))
    errors[k] = maxRelativeError(await ours[k].data(), await theirs[k].data());
  return errors;
}

/** @param {Record<string, tf.Tensor>} p */
const free = (p) => tf.dispose(Object.values(p));

/**
 * PEFT → JS: the adapter PEFT trained and saved (expected/peft-<name>/) loaded here onto a fresh base;
 * our probe against the one PEFT recorded beside it. Also the base alone against transformers'.
 * @param {string} name
 * @param {number[][]} docs  the probe entries
 */
export async function checkPeftAdapter(name, docs) {
  const base = await loadBase();
  const baseTheirs = await readProbe(join(expectedDir, 'base', 'probe.safetensors'));
  const baseOurs = probe(base, docs);
  const baseErrors = await compareProbes(baseOurs, baseTheirs);
  const { model } = await loadAdapter(base, join(expectedDir, `peft-${name}`), { strict: true });
  const theirs = await readProbe(join(expectedDir, `peft-${name}`, 'probe.safetensors'));
  const ours = probe(base, docs);
  const errors = await compareProbes(ours, theirs);
  const loss = { base: (await baseOurs.loss.data())[0], adapted: (await ours.loss.data())[0] };
  free(baseTheirs);
  free(baseOurs);
  free(theirs);
  free(ours);
  model.dispose();
  return { errors, baseErrors, loss };
}

/**
 * JS → PEFT: the adapter trained here, seeded, as `npm start` trains it; our probe against the one
 * PEFT computed when python/check_from_js.py loaded the adapter `npm start` saved. Returns the trained
 * model too (the caller saves or disposes it) and our probe (the caller disposes it); `errors` is
 * undefined when Python has not recorded this case yet.
 * @param {string} name
 * @param {{ train: number[][], probe: number[][] }} data
 */
export async function checkJsAdapter(name, data) {
  const { peft, model, losses } = await trainInJs(name, data.train);
  const ours = probe(model, data.probe);
  const recorded = join(expectedDir, `python-on-js-${name}.safetensors`);
  if (!existsSync(recorded)) return { peft, model, ours, errors: undefined, losses };
  const theirs = await readProbe(recorded);
  const errors = await compareProbes(ours, theirs);
  free(theirs);
  return { peft, model, ours, errors, losses };
}
