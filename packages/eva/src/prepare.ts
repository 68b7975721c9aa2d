/**
 * The functions that turn a batch into what each layer's incremental PCA sees, PEFT's defaults for
 * language modeling: the positions to keep (attention mask, and labels unless ignored), then each
 * target layer's input at those positions.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { LoraConfig } from '@lora/core';
import type { Module } from '@lora/nn';
import { EvaError } from './errors';

/**
 * A language-modeling batch: token ids `[batch, positions]`, and optionally the attention mask
 * (0 = padding) and labels (`labelMaskValue`, -100 by default, = ignored). Other keys are passed to the
 * model by the default forward function.
 */
export interface EvaBatch {
  inputIds: tf.Tensor;
  attentionMask?: tf.Tensor;
  labels?: tf.Tensor;
  [key: string]: unknown;
}

/** Runs the model on a batch (PEFT's `forward_fn`); its output is discarded. May return a Promise. */
export type ForwardFn<B> = (model: Module, batch: B) => unknown;

/**
 * Turns a batch into what every layer's {@link PrepareLayerInputsFn} receives (PEFT's
 * `prepare_model_inputs_fn`). Tensors it creates are disposed after the batch. May return a Promise.
 */
export type PrepareModelInputsFn<B> = (batch: B, config: LoraConfig) => unknown;

/**
 * Turns a target layer's call arguments (`args[0]` is its input) into the rows its PCA sees: a 2-D
 * `[tokens, features]` tensor (PEFT's `prepare_layer_inputs_fn(layer_input, model_input, layer_name)`).
 * Runs inside the forward pass: synchronous tensor code only.
 */
export type PrepareLayerInputsFn = (layerInput: unknown[], modelInput: unknown, layerName: string) => tf.Tensor2D;

function isBatchObject(batch: unknown): batch is EvaBatch {
  return typeof batch === 'object' && batch !== null && (batch as { inputIds?: unknown }).inputIds instanceof tf.Tensor;
}

function describe(batch: unknown): string {
  if (batch === null || typeof batch !== 'object') return `a ${batch === null ? 'null' : typeof batch}`;
  if (batch instanceof tf.Tensor) return `a tensor of shape [${batch.shape.join(', ')}]`;
  const keys = Object.keys(batch);
  return `an object with keys ${keys.length ? keys.map((k) => `'${k}'`).join(', ') : '(none)'}`;
}

/** Checks that a batch is what the default functions need, naming what it is instead. */
export function checkLanguageModelingBatch(batch: unknown, where: string): EvaBatch {
  if (isBatchObject(batch)) {
    if (batch.inputIds.rank !== 2)
      throw new EvaError(
        'bad-batch',
        `${where}: inputIds has shape [${batch.inputIds.shape.join(', ')}]; it must be [batch, positions]`,
      );
    for (const key of ['attentionMask', 'labels'] as const) {
      const t = batch[key];
      if (t === undefined) continue;
      if (!(t instanceof tf.Tensor) || t.shape.join() !== batch.inputIds.shape.join())
        throw new EvaError(
          'bad-batch',
          `${where}: ${key} must be a tensor shaped like inputIds [${batch.inputIds.shape.join(', ')}], got ${describe(t)}`,
        );
    }
    return batch;
  }
  throw new EvaError(
    'bad-batch',
    `${where} is ${describe(batch)}, not a batch { inputIds, attentionMask?, labels? } of tensors; ` +
      'give batches with an inputIds tensor, or pass your own forwardFn and prepareModelInputsFn (null for none)',
  );
}

/**
 * PEFT's `forward_fn_dict` for our models: `model.call(inputIds, { attentionMask, …rest })`, labels left
 * out (the loss is not needed).
 *
 * @example
 * ```ts
 * forwardFnDefault(llama, { inputIds, attentionMask }); // llama.call(inputIds, { attentionMask })
 * ```
 */
export function forwardFnDefault(model: Module, batch: unknown): unknown {
  const { inputIds, labels: _labels, ...rest } = checkLanguageModelingBatch(batch, 'the batch');
  return model.call(inputIds, rest);
}

/**
 * PEFT's `prepare_model_inputs_fn_language_modeling`: the `[N, 2]` (batch, position) indices of the
 * positions whose attention mask is set and, with `evaConfig.useLabelMask`, whose label is not
 * `labelMaskValue`, in row-major order (`mask.nonzero()`). Reads the mask and labels once.
 *
 * @example
 * ```ts
 * const idx = await prepareModelInputsFnLanguageModeling({ inputIds, attentionMask }, config); // int32 [N, 2]
 * ```
 */
export async function prepareModelInputsFnLanguageModeling(batch: unknown, config: LoraConfig): Promise<tf.Tensor2D> {
  const b = checkLanguageModelingBatch(batch, 'the batch');
  const [rows, cols] = b.inputIds.shape as [number, number];
  const keep = new Uint8Array(rows * cols).fill(1);
  if (b.attentionMask) {
    const mask = await b.attentionMask.data();
    for (let i = 0; i < keep.length; i++) if (!mask[i]) keep[i] = 0;
  }
  const eva = config.evaConfig;
  if ((eva?.useLabelMask ?? true) && b.labels) {
    const labels = await b.labels.data();
    const ignored = eva?.labelMaskValue ?? -100;
    for (let i = 0; i < keep.length; i++) if (labels[i] === ignored) keep[i] = 0;
  }
  const idx: number[] = [];
  for (let i = 0; i < keep.length; i++) if (keep[i]) idx.push(Math.floor(i / cols), i % cols);
  return tf.tensor2d(Int32Array.from(idx), [idx.length / 2, 2], 'int32');
}

/** The layer's input: `args[0]` when given the call's arguments. */
function layerInputTensor(layerInput: unknown, layerName: string): tf.Tensor {
  const x = Array.isArray(layerInput) ? layerInput[0] : layerInput;
  if (!(x instanceof tf.Tensor))
    throw new EvaError(
      'bad-layer-inputs',
      `layer '${layerName}' was called with ${x === null ? 'null' : typeof x} as its first argument, not a tensor; pass a prepareLayerInputsFn for it`,
    );
  return x;
}

/**
 * PEFT's `prepare_layer_inputs_fn_language_modeling`: the layer's input `[batch, positions, features]`
 * at the `[N, 2]` indices from {@link prepareModelInputsFnLanguageModeling}: `[N, features]`.
 */
export function prepareLayerInputsFnLanguageModeling(
  layerInput: unknown[],
  modelInput: unknown,
  layerName: string,
): tf.Tensor2D {
  const x = layerInputTensor(layerInput, layerName);
  if (!(modelInput instanceof tf.Tensor) || modelInput.rank !== 2 || modelInput.shape[1] !== x.rank - 1)
    throw new EvaError(
      'bad-layer-inputs',
      `layer '${layerName}': the default prepareLayerInputsFn gathers the input [${x.shape.join(', ')}] at [N, ${x.rank - 1}] indices from prepareModelInputsFn, got ${
        modelInput instanceof tf.Tensor ? `a tensor [${modelInput.shape.join(', ')}]` : typeof modelInput
      }; pass a matching prepareLayerInputsFn (null flattens the input)`,
    );
  return tf.gatherND(x, modelInput) as tf.Tensor2D;
}

/** PEFT's `_prepare_layer_inputs_fn_default` (with `prepare_layer_inputs_fn=None`): every position, `[-1, features]`. */
export function prepareLayerInputsFnFlatten(
  layerInput: unknown[],
  _modelInput: unknown,
  layerName: string,
): tf.Tensor2D {
  const x = layerInputTensor(layerInput, layerName);
  if (x.rank <= 2) return (x.rank === 2 ? x : tf.reshape(x, [1, -1])) as tf.Tensor2D;
  return tf.reshape(x, [-1, x.shape[x.rank - 1] as number]) as tf.Tensor2D;
}
