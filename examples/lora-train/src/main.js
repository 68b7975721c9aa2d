// @ts-check
// `npm run demo`: fortune-llama learns fortune-cookie predictions with LoRA (see demo.js).
//   node src/main.js [--steps N] [--out DIR]     LORA_BACKEND=wasm|cpu|webgpu|tensorflow (default: auto)
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend } from '@lora/tensor';
import { DEFAULTS, runDemo } from './demo.js';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: String(DEFAULTS.steps) },
    out: { type: 'string', default: join(import.meta.dirname, '..', 'out', 'adapter') },
  },
});
const steps = Number(values.steps);
if (!Number.isInteger(steps) || steps < 1) {
  console.error(`--steps must be a positive integer, got '${values.steps}'`);
  process.exit(2);
}
const info = await initBackend(/** @type {'auto'} */ (process.env.LORA_BACKEND ?? 'auto'));
console.log(`backend: ${info.name} (${info.adapter})`);
const r = await runDemo({ steps, out: values.out });

console.log(`
what to try next:
  - Python: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("examples/fortune-llama/model"), "${values.out}")
  - merge without code: npx lora merge --base examples/fortune-llama/model --adapter ${values.out} --out merged/
  - train longer or shorter: npm run start -w @lora-examples/lora-train -- --steps 120
  - another backend: LORA_BACKEND=webgpu npm run demo
  - the base model, its data and how it was trained: examples/fortune-llama/README.md`);

if (!(r.pplAfter < r.pplBefore) || r.reloadError > 1e-5 || r.mergeError > 1e-4 || !r.sameGreedy) {
  console.error('the demo did not reach what it checks: lower perplexity, identical reload, matching merge');
  process.exit(1);
}
