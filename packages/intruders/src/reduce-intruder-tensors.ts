import * as tf from '@tensorflow/tfjs-core';
import { type AdapterFiles, adapterTargets, loraFactorKeys, moduleScaling } from '@lora/core';
import { IntruderReductionError } from './errors';
import { factorLayout } from './layouts';
import { type IntruderSettings, checkAborted, resolveSettings } from './options';
import { runInOrder } from './in-order';
import { type IntruderLayerReport, reduceLayer } from './reduce-layer';
import { WeightSvdCache, contentKey } from './weight-svd-cache';

/** A base weight's values as a file holds them (decoded to float32), e.g. what `@lora/tensor`'s readers return. */
export interface RawWeight {
  values: Float32Array;
  shape: readonly number[];
}

/** Options of {@link reduceIntruderTensors}. */
export interface ReduceIntruderTensorsOptions extends IntruderSettings {
  /**
   * Whether a square 2-d weight at `path` is stored [in, out] (fan_in_fan_out, transformers' Conv1D);
   * default the config's `fan_in_fan_out`. Non-square weights tell by their shape.
   */
  fanInFanOut?: (path: string) => boolean;
}

/** What {@link reduceIntruderTensors} returns. */
export interface ReducedTensors {
  /**
   * The new factors of the layers that had intruders, by the adapter file's keys (`…lora_A.weight`,
   * `…lora_embedding_B`), in the old factors' shapes; the caller owns them. Every other tensor of the
   * adapter is unchanged.
   */
  tensors: Record<string, tf.Tensor>;
  layers: IntruderLayerReport[];
}

/**
 * {@link reduceIntruderDimension} on files, without building a model: the adapter as read from
 * `adapter_model.safetensors` (`{ config, tensors }`, as `@lora/core` and `lora` read it) and the base
 * weights by name (`<module path>.weight`), one at a time through `readWeight` so that memory stays
 * near one layer, or as a record of tensors. The same per-layer computation, logging and results as
 * on a model; PEFT's layer order is the adapter file's. Returns the new factors only; the config is the
 * old adapter's (PEFT gives the new adapter the old config), and lora_B biases, DoRA magnitudes and
 * other saved tensors stay as they are. What `lora reduce-intruders` runs.
 *
 * @example
 * ```ts
 * import { reduceIntruderTensors } from '@lora/intruders';
 * const { tensors, layers } = await reduceIntruderTensors(
 *   { config, tensors: adapterTensors },
 *   baseTensors,                        // { 'model.layers.0.self_attn.q_proj.weight': tensor, … }
 *   { topK: 4, thresholdEpsilon: 0.9, mitigationLambda: 0.5, loggingSink: null },
 * );
 * const out = { ...adapterTensors, ...tensors };   // the reduced adapter, for serializeSafetensors
 * ```
 */
export async function reduceIntruderTensors(
  adapter: AdapterFiles,
  weights: Record<string, tf.Tensor> | ((name: string) => Promise<RawWeight | undefined>),
  options: ReduceIntruderTensorsOptions = {},
): Promise<ReducedTensors> {
  const settings = resolveSettings(options);
  const { config, tensors } = adapter;
  const file = adapter.file ?? 'adapter_model.safetensors';
  const read = async (name: string): Promise<RawWeight | undefined> => {
    if (typeof weights === 'function') return weights(name);
    const t = weights[name];
    return t ? { values: (await t.data()) as Float32Array, shape: t.shape } : undefined;
  };
  const targets = [...adapterTargets(tensors)];
  const cache = options.svdCache ?? new WeightSvdCache();
  const out: Record<string, tf.Tensor> = {};
  const layers: IntruderLayerReport[] = [];
  try {
    const start = async (i: number) => {
      const [path, kind] = targets[i] as (typeof targets)[number];
      const [aKey, bKey] = loraFactorKeys(path, kind === 'embedding');
      const a = tensors[aKey];
      const b = tensors[bKey];
      if (!a || !b)
        throw new IntruderReductionError(
          `${file}: '${path}' has ${a ? 'no lora_B' : 'no lora_A'}; the adapter is incomplete`,
        );
      const weightName = `${path}.weight`;
      const w = await read(weightName);
      if (!w)
        throw new IntruderReductionError(
          `the base has no '${weightName}', which the adapter's '${path}' adapts: is this the adapter's base model?`,
        );
      const { scaling, r } = moduleScaling(config, path);
      if (a.shape[0] !== r)
        throw new IntruderReductionError(
          `${file}: '${aKey}' has rank ${a.shape[0]} but the adapter's config gives '${path}' r = ${r} (r, rank_pattern); the config and the weights do not belong together`,
        );
      const square = w.shape.length === 2 && w.shape[0] === w.shape[1];
      // a 2-d weight stored [in, out] is told by its shape, a square one by the config (as `lora merge` tells it)
      const fifo =
        kind === 'linear' &&
        w.shape.length === 2 &&
        (square
          ? (options.fanInFanOut?.(path) ?? config.fanInFanOut)
          : w.shape[0] === a.shape[1] && w.shape[1] === b.shape[0]);
      const layout = factorLayout(
        `'${path}'`,
        kind === 'linear' || kind === 'embedding' ? kind : 'conv',
        fifo,
        w.shape,
        a.shape,
        b.shape,
      );
      const [aValues, bValues] = (await Promise.all([a.data(), b.data()])) as [Float32Array, Float32Array];
      const weightKey = await contentKey(w.values, w.shape);
      const reduced = await reduceLayer(
        {
          path,
          layout,
          weightKey,
          weightVersion: null,
          factorVersions: [await contentKey(aValues, a.shape), await contentKey(bValues, b.shape), `fifo:${fifo}`],
          weightMatrix: () => tf.tensor2d(w.values, [layout.m, layout.n]),
          a: aValues,
          b: bValues,
          scaling,
        },
        settings,
        cache,
      );
      return { ...reduced, path, aKey, bKey, aShape: a.shape, bShape: b.shape };
    };
    await runInOrder(
      targets.length,
      settings.concurrency,
      start,
      (i, { report, factors, line, path, aKey, bKey, aShape, bShape }) => {
        settings.log(line);
        layers.push(report);
        if (factors) {
          out[aKey] = tf.tensor(factors.a, aShape);
          out[bKey] = tf.tensor(factors.b, bShape);
        }
        options.onProgress?.(i + 1, targets.length, path);
      },
      options.signal,
    );
    checkAborted(options.signal);
  } catch (e) {
    tf.dispose(Object.values(out));
    throw e;
  } finally {
    if (!options.svdCache) cache.dispose();
  }
  return { tensors: out, layers };
}
