import type * as tf from '@tensorflow/tfjs-core';
import type { Module } from '@lora/nn';

/**
 * How @lora finds a model's input and output embeddings, where PEFT calls transformers'
 * `get_input_embeddings()` / `get_output_embeddings()`:
 *
 * 1. the model's own `getInputEmbeddings()` / `getOutputEmbeddings()` method, when it has one;
 * 2. otherwise the first module named `embed_tokens` (input) or `lm_head` (output), the names
 *    Hugging Face's decoder models (and `@lora/models`' Llama) use.
 *
 * A model that needs another rule defines the method.
 *
 * @example
 * ```ts
 * class Gpt2 extends Module implements ModelWithEmbeddings {
 *   wte = this.registerModule('wte', new Embedding(50257, 768));
 *   getInputEmbeddings() { return this.wte; }
 *   // …
 * }
 * ```
 */
export interface ModelWithEmbeddings extends Module {
  getInputEmbeddings?(): Module;
  getOutputEmbeddings?(): Module | null;
}

function pathOf(model: Module, target: Module | null | undefined): string | null {
  if (!target) return null;
  for (const [path, m] of model.namedModules()) if (m === target && path !== '') return path;
  return null;
}

function pathNamed(model: Module, name: string): string | null {
  for (const [path] of model.namedModules()) if (path === name || path.endsWith(`.${name}`)) return path;
  return null;
}

/**
 * The path of the model's input embedding by the rule of {@link ModelWithEmbeddings}, or null.
 *
 * @example
 * ```ts
 * inputEmbeddingsPath(llama); // 'model.embed_tokens'
 * ```
 */
export function inputEmbeddingsPath(model: Module): string | null {
  const m = model as ModelWithEmbeddings;
  if (typeof m.getInputEmbeddings === 'function') return pathOf(model, m.getInputEmbeddings());
  return pathNamed(model, 'embed_tokens');
}

/**
 * The path of the model's output embedding (the layer over the vocabulary) by the rule of
 * {@link ModelWithEmbeddings}, or null.
 *
 * @example
 * ```ts
 * outputEmbeddingsPath(llama); // 'lm_head'
 * ```
 */
export function outputEmbeddingsPath(model: Module): string | null {
  const m = model as ModelWithEmbeddings;
  if (typeof m.getOutputEmbeddings === 'function') return pathOf(model, m.getOutputEmbeddings());
  return pathNamed(model, 'lm_head');
}

/** The innermost wrapped layer: through LoRA layers' and token wrappers' base layers. */
export function unwrapLayer(m: Module): Module {
  let cur = m as Module & { baseLayer?: Module; tokenAdapter?: { baseLayer: Module } };
  for (;;) {
    if (cur.tokenAdapter) cur = cur.tokenAdapter.baseLayer as typeof cur;
    else if (cur.baseLayer) cur = cur.baseLayer as typeof cur;
    else return cur;
  }
}

/** Wrapper segments that sit between a module's path and the layer that owns its weight. */
const WRAPPER_TAIL = /(\.token_adapter\.base_layer|\.base_layer|\.original_module)+$/;

/**
 * Paths of the modules whose weight is the input embedding's own (output layers tied to the
 * embedding), as PEFT's `_get_module_names_tied_with_embedding`: a module wrapped by LoRA or a
 * token wrapper is named by its outer path. In a module tree sharing is the definition of tying, so
 * no config flag is read. Sorted.
 */
export function tiedModulePaths(model: Module, embeddingPath: string): string[] {
  const weight = (unwrapLayer(model.getSubmodule(embeddingPath)) as { weight?: tf.Variable }).weight;
  if (!weight) return [];
  const out = new Set<string>();
  for (const [path, m] of model.namedModules()) {
    if (path === embeddingPath || path.startsWith(`${embeddingPath}.`)) continue;
    if (m.getParameter('weight') === weight) out.add(path.replace(WRAPPER_TAIL, ''));
  }
  return [...out].sort();
}
