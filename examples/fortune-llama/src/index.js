// @ts-check
/**
 * Where fortune-llama's files are, and a reader for its data: works in Node and in bundlers that
 * resolve `new URL(..., import.meta.url)` (Vite).
 *
 * @example
 * ```js
 * import { fileURLToPath } from 'node:url';
 * import { LlamaForCausalLM, loadTokenizer } from '@lora/models';
 * import { modelUrl } from '@lora-examples/fortune-llama';
 * const model = await LlamaForCausalLM.fromPretrained(fileURLToPath(modelUrl));
 * const tokenizer = await loadTokenizer(fileURLToPath(modelUrl));
 * ```
 */

/** The model folder: config.json, generation_config.json, model.safetensors, tokenizer files. */
export const modelUrl = new URL(/* @vite-ignore */ '../model/', import.meta.url);

/** The LoRA task's data: `fortunes.train.txt` and `fortunes.heldout.txt` (fortune's own format). */
export const dataUrl = new URL(/* @vite-ignore */ '../data/', import.meta.url);

/** The model's one special token: beginning, end and padding of every entry. */
export const END_OF_TEXT = '<|endoftext|>';

/**
 * The entries of a fortune file: texts separated by lines that hold only `%`.
 * @param {string} text
 * @returns {string[]}
 */
export function parseFortunes(text) {
  return text
    .replace(/\r\n/g, '\n')
    .split(/^%$/m)
    .map((e) => e.replace(/^\n+|\n+$/g, ''))
    .filter((e) => e.trim().length > 0);
}

export { padBatch, shuffledBatches } from './batches.js';
