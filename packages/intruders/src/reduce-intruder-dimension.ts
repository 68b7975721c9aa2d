import * as tf from '@tensorflow/tfjs-core';
import type { PeftModel, TunerLayer } from '@lora/core';
import { storedWeightRefusal } from '@lora/nn';
import { IntruderReductionError } from './errors';
import { factorLayout } from './layouts';
import { type IntruderSettings, checkAborted, resolveSettings } from './options';
import { runInOrder } from './in-order';
import { type IntruderLayerReport, type LayerInput, reduceLayer } from './reduce-layer';
import { WeightSvdCache } from './weight-svd-cache';

/** Options of {@link reduceIntruderDimension}: PEFT's, camelCase, with PEFT's defaults. */
export interface ReduceIntruderDimensionOptions extends IntruderSettings {
  /** The adapter to reduce (default `'default'`); it is left as it was. */
  oldAdapterName?: string;
  /** The adapter made (default `'intruder_reduced'`); it must not exist yet. It becomes the active adapter. */
  newAdapterName?: string;
}

/** What {@link reduceIntruderDimension} found: one entry per LoRA layer of the old adapter, in PEFT's order. */
export interface IntruderReport {
  adapterName: string;
  layers: IntruderLayerReport[];
}

function isPeftModel(x: unknown): x is PeftModel {
  return (
    typeof x === 'object' &&
    x !== null &&
    (x as PeftModel).peftConfig instanceof Map &&
    typeof (x as PeftModel).loraLayers === 'function' &&
    typeof (x as PeftModel).addAdapter === 'function'
  );
}

/** Copies one variable's values into another of the same shape. */
function copyInto(target: tf.Variable, source: tf.Tensor): void {
  target.assign(source);
}

/**
 * Intruder-dimension reduction ("LoRA vs Full Fine-tuning: an Illusion of Equivalence", arXiv
 * 2410.21228) as PEFT 0.21's `reduce_intruder_dimension`: for each LoRA layer of the old adapter,
 * the leading `topK` left singular vectors of W + ΔW whose largest |cosine| with W's left singular
 * vectors is below `thresholdEpsilon` are intruders; each intruder's singular value is scaled by
 * `mitigationLambda`, and the result minus W, divided by the adapter's scaling, is split back into
 * rank-r factors (√S on each side). The factors go to a new adapter (`newAdapterName`, the old one's
 * config), which becomes the active adapter; the old one is untouched (`peft.setAdapter(old)`).
 * `loggingSink` receives PEFT's lines. Same intruders and the same new ΔW as PEFT (checked against
 * PEFT 0.21's own output), from one SVD per base weight instead of PEFT's three per layer (see the
 * README for what each step costs); pass a {@link WeightSvdCache} to keep those SVDs for later calls.
 *
 * Where PEFT 0.21 goes wrong, this does not: Embedding and fan_in_fan_out (Conv1D) layers get their
 * factors in the right layout (PEFT writes them transposed); convolutions are reduced on the kernel
 * flattened to [out, in·k] (PEFT fails); the new adapter is created without running its
 * initialisation again (PEFT re-runs PiSSA/OLoRA/LoRA-GA inits, which change the base weights), and
 * keeps the old adapter's lora_B bias, DoRA magnitudes, modules_to_save copies and trainable tokens
 * (PEFT resets them to their initial values).
 *
 * Refuses, before changing anything: a model that is not a PEFT LoRA model (PEFT's message), an old
 * adapter that does not exist or a new name that does, layers with merged adapters (W must be the
 * base weight), grouped convolutions. On an error or an abort midway the new adapter is removed.
 *
 * @example
 * ```ts
 * import { reduceIntruderDimension } from '@lora/intruders';
 * const report = await reduceIntruderDimension(peft, { mitigationLambda: 0.5, loggingSink: null });
 * peft.activeAdapter;                          // 'intruder_reduced'
 * report.layers.map((l) => l.intruders.length); // per layer, as PEFT logs "<module>: Intruders: N"
 * peft.setAdapter('default');                  // back to the adapter as trained
 * ```
 */
export async function reduceIntruderDimension(
  peft: PeftModel,
  options: ReduceIntruderDimensionOptions = {},
): Promise<IntruderReport> {
  const settings = resolveSettings(options);
  const oldName = options.oldAdapterName ?? 'default';
  const newName = options.newAdapterName ?? 'intruder_reduced';
  if (!isPeftModel(peft))
    throw new IntruderReductionError('The provided model is not using LoRA and is therefore not supported.');
  const config = peft.peftConfig.get(oldName);
  if (!config)
    throw new IntruderReductionError(
      `adapter '${oldName}' does not exist; the model has ${peft.adapters.map((a) => `'${a}'`).join(', ') || 'none'} (set oldAdapterName)`,
    );
  if (typeof newName !== 'string' || newName === '')
    throw new IntruderReductionError(`newAdapterName ${JSON.stringify(newName)} must be a non-empty string`);
  if (peft.peftConfig.has(newName))
    throw new IntruderReductionError(
      `Adapter with name ${newName} already exists. Choose another newAdapterName, or peft.deleteAdapter('${newName}') first.`,
    );

  // every layer checked before any work
  const layers: [string, TunerLayer, LayerInput][] = [];
  for (const [path, layer] of peft.loraLayers()) {
    const settingsOf = layer.settings.get(oldName);
    if (!settingsOf) continue;
    if (layer.mergedAdapters.length)
      throw new IntruderReductionError(
        `'${path}' has merged adapters (${layer.mergedAdapters.join(', ')}): its weight is not the base weight; call peft.unmergeAdapter() first`,
      );
    const refused = storedWeightRefusal(layer.baseLayer, `reduceIntruderDimension on '${path}'`);
    if (refused) throw new IntruderReductionError(refused);
    const w = layer.baseLayer.weight;
    const a = layer.factorA(oldName);
    const b = layer.factorB(oldName);
    const layout = factorLayout(
      `'${path}'`,
      layer.kind,
      layer.kind === 'linear' && settingsOf.fanInFanOut,
      w.shape,
      a.shape,
      b.shape,
    );
    layers.push([
      path,
      layer,
      {
        path,
        layout,
        weightKey: `variable:${w.id}:${layout.m}x${layout.n}`,
        weightVersion: w.dataId,
        factorVersions: [a.dataId, b.dataId],
        weightMatrix: () => tf.reshape(w, [layout.m, layout.n]),
        a: [],
        b: [],
        scaling: layer.scaling.get(oldName) as number,
      },
    ]);
  }

  const cache = options.svdCache ?? new WeightSvdCache();
  const results: { layer: TunerLayer; factors: { a: Float32Array; b: Float32Array } | null }[] = [];
  const reports: IntruderLayerReport[] = [];
  try {
    // every layer's A and B read back at once (in a few large reads), not two round trips a layer
    const factorValues = await readAll(layers.flatMap(([, layer]) => [layer.factorA(oldName), layer.factorB(oldName)]));
    checkAborted(options.signal);
    await runInOrder(
      layers.length,
      settings.concurrency,
      async (i) => {
        const [, , input] = layers[i] as (typeof layers)[number];
        const [aValues, bValues] = [factorValues[2 * i], factorValues[2 * i + 1]] as [Float32Array, Float32Array];
        return reduceLayer({ ...input, a: aValues, b: bValues }, settings, cache);
      },
      (i, { report, factors, line }) => {
        const [path, layer] = layers[i] as (typeof layers)[number];
        settings.log(line);
        reports.push(report);
        results.push({ layer, factors });
        options.onProgress?.(i + 1, layers.length, path);
      },
      options.signal,
    );
    checkAborted(options.signal);
  } finally {
    if (!options.svdCache) cache.dispose();
  }

  // the new adapter with the old one's config, made without running its initialisation (PEFT's
  // add_adapter would run PiSSA or LoRA-GA again on the base weights); its config keeps the old value
  peft.addAdapter(newName, { ...config, initLoraWeights: false });
  try {
    const made = peft.peftConfig.get(newName);
    if (made) peft.peftConfig.set(newName, { ...made, initLoraWeights: config.initLoraWeights });
    for (const { layer, factors } of results) {
      if (!layer.settings.has(newName)) continue;
      const a = layer.factorA(newName);
      const b = layer.factorB(newName);
      if (factors) {
        tf.tidy(() => {
          a.assign(tf.tensor(factors.a, a.shape));
          b.assign(tf.tensor(factors.b, b.shape));
        });
      } else {
        copyInto(a, layer.factorA(oldName));
        copyInto(b, layer.factorB(oldName));
      }
      // what the method does not touch stays as trained: lora_B's bias, DoRA's magnitudes
      const bias = layer.loraBias(oldName);
      const newBias = layer.loraBias(newName);
      if (bias && newBias) copyInto(newBias, bias);
      const oldSaved = layer.savedTensors(oldName);
      const newSaved = layer.savedTensors(newName);
      for (const [suffix, t] of Object.entries(newSaved))
        if (t !== a && t !== b && t !== newBias && oldSaved[suffix]) copyInto(t, oldSaved[suffix] as tf.Variable);
    }
    for (const [, wrapper] of peft.modulesToSaveWrappers()) {
      if (!wrapper.modulesToSave.has(oldName) || !wrapper.modulesToSave.has(newName)) continue;
      const from = new Map(wrapper.modulesToSave.get(oldName).namedParameters());
      for (const [name, p] of wrapper.modulesToSave.get(newName).namedParameters()) {
        const src = from.get(name);
        if (src) copyInto(p, src);
      }
    }
    for (const [, tokens] of peft.tokenLayers()) {
      const deltas = tokens.trainableTokensDelta;
      if (deltas?.has(oldName) && deltas.has(newName)) copyInto(deltas.get(newName), deltas.get(oldName));
    }
    settings.log(`Enabling new adapter ${newName}`);
    peft.setAdapter(newName);
  } catch (e) {
    if (peft.peftConfig.has(newName)) peft.deleteAdapter(newName);
    throw e;
  }
  return { adapterName: newName, layers: reports };
}

/** Below this many values a read joins others (about 32 MiB of float32 a read). */
const READ_CHUNK = 2 ** 23;

/**
 * The values of each tensor, read back in as few round trips as fit {@link READ_CHUNK}: consecutive
 * tensors flattened and concatenated on the backend, one read each group, split on the host.
 */
async function readAll(tensors: tf.Tensor[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let from = 0; from < tensors.length; ) {
    let to = from;
    let size = 0;
    while (to < tensors.length && (to === from || size + (tensors[to] as tf.Tensor).size <= READ_CHUNK))
      size += (tensors[to++] as tf.Tensor).size;
    const group = tensors.slice(from, to);
    const joined = tf.tidy(() =>
      group.length === 1 ? tf.reshape(group[0] as tf.Tensor, [-1]) : tf.concat(group.map((t) => tf.reshape(t, [-1]))),
    );
    let values: Float32Array;
    try {
      values = (await joined.data()) as Float32Array;
    } finally {
      joined.dispose();
    }
    let at = 0;
    for (const t of group) {
      out.push(values.subarray(at, at + t.size));
      at += t.size;
    }
    from = to;
  }
  return out;
}
