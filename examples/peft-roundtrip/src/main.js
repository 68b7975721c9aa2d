// @ts-check
// `npm start`: both directions of the round trip, for each case of roundtrip.json.
//   PEFT → JS: loads the adapters python/train_in_peft.py trained (expected/peft-<case>/) and compares
//              our outputs with PEFT's.
//   JS → PEFT: trains each case here (seeded), saves it in PEFT's format into out/js-<case>/ with our
//              probe beside it; then run python/check_from_js.py, which loads them into PEFT.
//   node src/main.js [--out DIR]     LORA_BACKEND=wasm|cpu (default wasm)
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { saveAdapter } from '@lora/core';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { checkJsAdapter, checkPeftAdapter } from './check.js';
import { SETTINGS, loadData } from './roundtrip.js';

const { values } = parseArgs({ options: { out: { type: 'string', default: join(import.meta.dirname, '..', 'out') } } });
const info = await initBackend(/** @type {'wasm'} */ (process.env.LORA_BACKEND ?? 'wasm'));
console.log(`backend: ${info.name}`);
const data = await loadData();
/** @param {Record<string, number>} e */
const fmt = (e) =>
  Object.entries(e)
    .map(([k, v]) => `${k} ${v.toExponential(1)}`)
    .join(', ');

console.log('\nPEFT → @lora: adapters PEFT 0.21 trained and saved (expected/peft-<case>/), loaded here');
for (const name of Object.keys(SETTINGS.cases)) {
  const r = await checkPeftAdapter(name, data.probe);
  console.log(
    `  peft-${name}: probe loss ${r.loss.base?.toFixed(4)} (base) -> ${r.loss.adapted?.toFixed(4)}; max relative error against PEFT: ${fmt(r.errors)} (base alone: ${fmt(r.baseErrors)})`,
  );
}

console.log(
  `\n@lora → PEFT: trained here (${SETTINGS.training.steps} steps, seed ${SETTINGS.training.seed}), saved into ${values.out}`,
);
for (const name of Object.keys(SETTINGS.cases)) {
  const dir = join(values.out, `js-${name}`);
  const { peft, ours, errors, losses } = await checkJsAdapter(name, data);
  await rm(dir, { recursive: true, force: true }); // our own output of an earlier run, probe included
  await saveAdapter(peft, dir);
  await writeFile(join(dir, 'probe.safetensors'), await serializeSafetensors({ ...ours }));
  console.log(
    `  js-${name}: loss ${losses[0]?.toFixed(4)} -> ${losses.at(-1)?.toFixed(4)}, probe loss ${(await ours.loss.data())[0]?.toFixed(4)}; ${
      errors ? `against what PEFT computed with it when it was recorded: ${fmt(errors)}` : 'not recorded by Python yet'
    }`,
  );
  tf.dispose(Object.values(ours));
  peft.dispose();
}
console.log(`\nnext: .venv-oracle/bin/python examples/peft-roundtrip/python/check_from_js.py ${values.out}`);
