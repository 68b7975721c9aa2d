// @ts-check
// The page: picks a backend (WebGPU, else wasm), loads fortune-llama, fine-tunes with a live loss
// chart, shows generations before and after, and offers the adapter as a PEFT zip. What it did is
// also left in `window.__lora` (read by the end-to-end test).
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@lora/tensor';
import wasmUrl from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm?url';
import wasmSimdUrl from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm?url';
import wasmThreadedUrl from '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-threaded-simd.wasm?url';
import { drawLossChart } from './chart.js';
import { SETTINGS, adapterZip, fineTune, generations, heldoutLoss, loadFortuneLlama } from './finetune.js';

/**
 * @typedef {object} PageState
 * @property {boolean} done  training and the after-generations finished (or an error stopped the page)
 * @property {string} [backend]
 * @property {string} [adapter]
 * @property {boolean} [software]
 * @property {number[]} losses
 * @property {number} [heldoutBefore]
 * @property {number} [heldoutAfter]
 * @property {string[]} before
 * @property {string[]} after
 * @property {string[]} errors
 */
/** @type {PageState} */
const state = { done: false, losses: [], before: [], after: [], errors: [] };
/** @type {any} */ (window).__lora = state;

const params = new URLSearchParams(location.search);
const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const stepsInput = /** @type {HTMLInputElement} */ ($('steps'));
const trainButton = /** @type {HTMLButtonElement} */ ($('train'));
const downloadButton = /** @type {HTMLButtonElement} */ ($('download'));
const canvas = /** @type {HTMLCanvasElement} */ ($('chart'));
const status = (/** @type {string} */ s) => {
  $('status').textContent = s;
};
const maxNewTokens = Number(params.get('tokens') ?? 24);
const batchSize = Number(params.get('batch') ?? SETTINGS.batchSize);
if (params.has('steps')) stepsInput.value = String(Number(params.get('steps')));

const importers = {
  '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
  '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
  '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
};
const wasm = {
  wasmPaths: {
    'tfjs-backend-wasm.wasm': wasmUrl,
    'tfjs-backend-wasm-simd.wasm': wasmSimdUrl,
    'tfjs-backend-wasm-threaded-simd.wasm': wasmThreadedUrl,
  },
};

/** WebGPU when the browser has it, else wasm: 'auto' (the default) tries them in that order. */
async function startBackend() {
  const wanted = /** @type {'auto' | 'webgpu' | 'wasm' | 'cpu'} */ (params.get('backend') ?? 'auto');
  if (wanted !== 'auto') return initBackend(wanted, { importers, wasm, webgpu: { allowSoftware: true } });
  try {
    return await initBackend('webgpu', { importers, webgpu: { allowSoftware: false } });
  } catch (e) {
    console.warn(`WebGPU unavailable, falling back to wasm: ${/** @type {Error} */ (e).message}`);
    return initBackend('wasm', { importers, wasm });
  }
}

/** @param {string[]} before @param {string[]} after */
function showGenerations(before, after) {
  const body = /** @type {HTMLTableSectionElement} */ (document.querySelector('#generations tbody'));
  body.replaceChildren();
  SETTINGS.prompts.forEach((p, i) => {
    const tr = document.createElement('tr');
    for (const text of [p, before[i] ?? '', after[i] ?? '…']) {
      const td = document.createElement('td');
      td.textContent = text.replace(/\s+/g, ' ').trim();
      tr.append(td);
    }
    body.append(tr);
  });
}

try {
  const info = await startBackend();
  Object.assign(state, { backend: info.name, adapter: info.adapter, software: info.software });
  $('backend').textContent =
    `${info.name === 'webgpu' ? 'WebGPU' : info.name} (${info.adapter}${info.software ? ', software' : ''})`;
  const loaded = await loadFortuneLlama(status);
  const { model, tokenizer } = loaded;
  status(`${(loaded.bytes / 1e6).toFixed(1)} MB of bf16 weights loaded; sampling from the base model…`);
  state.heldoutBefore = await heldoutLoss(model, loaded.heldout);
  state.before = await generations(model, tokenizer, maxNewTokens);
  showGenerations(state.before, []);
  drawLossChart(canvas, [], Number(stepsInput.value));
  $('summary').textContent =
    `held-out loss (${loaded.heldout.length} unseen entries): ${state.heldoutBefore.toFixed(3)} before`;
  status('ready');
  trainButton.disabled = false;

  /** @type {import('@lora/core').PeftModel | undefined} */
  let peft;
  const run = async () => {
    trainButton.disabled = true;
    downloadButton.disabled = true;
    const steps = Math.max(1, Math.floor(Number(stepsInput.value)));
    state.losses = [];
    if (peft) peft.unload(); // a second run starts from the base again
    const t0 = performance.now();
    peft = await fineTune(
      model,
      loaded.train,
      steps,
      async (step, loss) => {
        state.losses.push(loss);
        drawLossChart(canvas, state.losses, steps);
        const perStep = (performance.now() - t0) / step;
        status(`step ${step}/${steps}: loss ${loss.toFixed(3)} (${(perStep / 1000).toFixed(2)} s/step)`);
        await new Promise((r) => setTimeout(r, 0)); // let the page paint
      },
      batchSize,
    );
    state.heldoutAfter = await heldoutLoss(model, loaded.heldout);
    $('summary').textContent =
      `held-out loss (${loaded.heldout.length} unseen entries): ${state.heldoutBefore?.toFixed(3)} before → ${state.heldoutAfter.toFixed(3)} after ${steps} steps`;
    status('sampling from the fine-tuned model…');
    state.after = await generations(model, tokenizer, maxNewTokens);
    showGenerations(state.before, state.after);
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    status(`fine-tuned in ${seconds} s · ${tf.memory().numTensors} tensors live`);
    trainButton.disabled = false;
    downloadButton.disabled = false;
    state.done = true;
  };
  trainButton.addEventListener('click', () => run().catch(fail));
  downloadButton.addEventListener('click', async () => {
    if (!peft) return;
    const zip = await adapterZip(peft);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([/** @type {BlobPart} */ (zip)], { type: 'application/zip' }));
    a.download = 'fortune-llama-lora-adapter.zip';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  });
  if (params.get('autorun') === '1') await run();
} catch (e) {
  fail(e);
}

/** @param {unknown} e */
function fail(e) {
  const message = e instanceof Error ? e.message : String(e);
  state.errors.push(message);
  status(`error: ${message}`);
  console.error(e);
  state.done = true;
}
