import * as tf from '@tensorflow/tfjs-core';
import { PeftModel } from '@lora/core';
import type { ModelFiles } from '@lora/tensor';
import { type CheckpointWeights, openCheckpointWeights } from './checkpoint-weights';
import { type LoftqSvd, lowRankFactors, useFullSvd } from './loftq-init';
import { LoraQuantizedLinear } from './lora-quantized-linear';

/** Options of {@link replaceLoraWeightsLoftq}, PEFT's `replace_lora_weights_loftq` arguments. */
export interface ReplaceLoraWeightsLoftqOptions {
  /**
   * Where the full-precision weights are: a directory (or a set of files, in a browser) holding
   * `model.safetensors` or a sharded checkpoint, or the path of a `.safetensors` file. Without it, the
   * model's `config.nameOrPath` (`_name_or_path`) is looked up in the local Hugging Face cache, as PEFT
   * does.
   */
  modelPath?: ModelFiles;
  /** The adapter whose A and B are replaced (default `'default'`). */
  adapterName?: string;
  /**
   * Called after each layer's replacement with the model and the layer's path; the new A and B stay
   * only when it returns (or resolves to) true, else the old ones come back (PEFT's greedy search:
   * keep a layer when the logits got closer to the full-precision model's).
   */
  callback?: (model: PeftModel, moduleName: string) => boolean | Promise<boolean>;
  /** The SVD of each residual (see {@link loftqInit}); default `'auto'`. */
  svd?: LoftqSvd;
  /** Called as each layer is done. */
  onLayer?: (layer: { path: string; index: number; total: number; kept: boolean }) => void;
}

/** What {@link replaceLoraWeightsLoftq} did, per layer. */
export interface ReplaceLoraWeightsLoftqResult {
  /** The layers whose A and B were replaced and kept. */
  replaced: string[];
  /** The layers the callback rolled back. */
  rolledBack: string[];
}

function configuredPath(peft: PeftModel): string | null {
  const config = (peft.model as { config?: { nameOrPath?: unknown; _name_or_path?: unknown } }).config;
  const p = config?.nameOrPath ?? config?._name_or_path;
  return typeof p === 'string' && p.length > 0 ? p : null;
}

/**
 * LoftQ on a model whose base is already quantized (PEFT's `replace_lora_weights_loftq`): for each LoRA
 * layer over a {@link QuantizedLinear}, reads that layer's full-precision weight W from the checkpoint,
 * takes the best rank-r approximation of W − dequantize(Q) (one LoftQ step: the quantized base is not
 * changed) and sets lora_A = √S·Vhᵣ and lora_B = Uᵣ·√S, r being the adapter's rank there. One layer at a
 * time, reading one tensor at a time. PEFT needs bitsandbytes' 4-bit layers and a safetensors file on
 * disk; here any quantized format, and in a browser a set of `File`s.
 *
 * As in PEFT, the factors assume a scaling α/r of 1 (set `loraAlpha = r`).
 *
 * @example
 * ```ts
 * quantizeModel(model, { bits: 4 });
 * const peft = getPeftModel(model, { r: 16, loraAlpha: 16, targetModules: 'all-linear' });
 * await replaceLoraWeightsLoftq(peft, {
 *   modelPath: 'models/SmolLM-135M',
 *   callback: async (m, name) => (await logitsError(m)) < best,    // keep a layer only if it helped
 * });
 * ```
 */
export async function replaceLoraWeightsLoftq(
  peftModel: PeftModel,
  options: ReplaceLoraWeightsLoftqOptions = {},
): Promise<ReplaceLoraWeightsLoftqResult> {
  if (!(peftModel instanceof PeftModel))
    throw new TypeError('The passed model does not appear to be a valid PeftModel');
  const adapterName = options.adapterName ?? 'default';
  const layers = [...peftModel.loraLayers()].filter(
    (e): e is [string, LoraQuantizedLinear] => e[1] instanceof LoraQuantizedLinear && e[1].settings.has(adapterName),
  );
  if (layers.length === 0)
    throw new Error(
      `No quantized LoRA layer found on the model (PEFT: "No bnb LoRA module found on the model"): quantize the base with quantizeModel before getPeftModel${
        [...peftModel.loraLayers()].length ? `, or check adapterName ('${adapterName}')` : ''
      }`,
    );
  let modelPath = options.modelPath;
  if (modelPath === undefined) {
    const p = configuredPath(peftModel);
    if (!p)
      throw new Error(
        'The provided model does not appear to be a transformers model or is a local model. In this case, you must pass the model_path argument (modelPath) that points to the safetensors file.',
      );
    modelPath = p;
  }
  let weights: CheckpointWeights;
  try {
    weights = await openCheckpointWeights(modelPath);
  } catch (e) {
    throw options.modelPath === undefined
      ? new Error(
          `The model.safetensors file must be present on disk, but it could not be found (${(e as Error).message})`,
        )
      : e;
  }
  const replaced: string[] = [];
  const rolledBack: string[] = [];
  try {
    for (const [index, [path, layer]] of layers.entries()) {
      // PEFT: name + ".weight", then without the base model's prefix (`model.`)
      const key = weights.names.includes(`${path}.weight`)
        ? `${path}.weight`
        : path.includes('.') && weights.names.includes(`${path.slice(path.indexOf('.') + 1)}.weight`)
          ? `${path.slice(path.indexOf('.') + 1)}.weight`
          : null;
      if (!key)
        throw new Error(
          `the checkpoint has no tensor '${path}.weight' (nor '${path.slice(path.indexOf('.') + 1)}.weight') for the LoRA layer '${path}'`,
        );
      const w = (await weights.get(key)) as tf.Tensor;
      const base = layer.baseLayer;
      if (w.shape.join() !== `${base.outFeatures},${base.inFeatures}`) {
        w.dispose();
        throw new Error(
          `'${key}' is [${w.shape.join(', ')}] but the layer '${path}' is [${base.outFeatures}, ${base.inFeatures}]`,
        );
      }
      const q = base.dequantize();
      const e = tf.sub(w, q);
      const residual = (await e.data()) as Float32Array;
      tf.dispose([w, q, e]);
      const r = (layer.settings.get(adapterName) as { r: number }).r;
      const shape: [number, number] = [base.outFeatures, base.inFeatures];
      const { L, R } = await lowRankFactors(residual, shape, r, useFullSvd(options.svd, shape));
      const a = layer.factorA(adapterName);
      const b = layer.factorB(adapterName);
      let kept = true;
      if (!options.callback) {
        a.assign(R);
        b.assign(L);
      } else {
        const [oldA, oldB] = [tf.clone(a), tf.clone(b)];
        a.assign(R);
        b.assign(L);
        try {
          kept = Boolean(await options.callback(peftModel, path));
        } catch (err) {
          a.assign(oldA);
          b.assign(oldB);
          tf.dispose([oldA, oldB, L, R]);
          throw err;
        }
        if (!kept) {
          a.assign(oldA);
          b.assign(oldB);
        }
        tf.dispose([oldA, oldB]);
      }
      tf.dispose([L, R]);
      (kept ? replaced : rolledBack).push(path);
      options.onLayer?.({ path, index, total: layers.length, kept });
    }
  } finally {
    await weights.close();
  }
  return { replaced, rolledBack };
}
