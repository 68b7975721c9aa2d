/**
 * DoRA (weight-decomposed LoRA, PEFT's `use_dora`) as a layer variant, for every layer kind: its
 * magnitude, forward, merge and unmerge in one place, as PEFT 0.21's `DoraLinearVariant`,
 * `DoraEmbeddingVariant` and `DoraConv{1,2}dVariant` with their `Dora*Layer`s. W' = m ⊙ (W + ΔW) /
 * ‖W + ΔW‖, the norm taken per output unit (Linear rows, convolution output channels) or per
 * embedding dimension (over the vocabulary), and detached.
 */
import * as tf from '@tensorflow/tfjs-core';
import { type ConvOptions, Module, conv, linear, transposedLinear } from '@lora/nn';
import { PEFT_SUFFIX } from '../files/peft-keys';
import type { TunerLayer } from '../layers/tuner-layer';
import type { LoraVariant } from './variant-types';
import { LoraConfigError } from '../errors';

/**
 * DoRA's magnitude vector, held as `lora_magnitude_vector.<adapter>.weight` as in PEFT (saved as
 * `…lora_magnitude_vector`). Its shape is PEFT's: `[out]` for Linear, `[dim]` for Embedding,
 * `[1, out, 1(, 1)]` for Conv1d / Conv2d.
 */
export class Magnitude extends Module {
  weight: tf.Variable;
  constructor(value: tf.Tensor) {
    super();
    this.weight = this.registerParameter('weight', value);
  }
  forward(): never {
    throw new Error('a magnitude vector is a parameter holder');
  }
}

/** The value of x with no gradient flowing back through it (torch's `.detach()`). */
export const detach = tf.customGrad(((x: tf.Tensor) => ({
  value: tf.clone(x),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
})) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;

/**
 * The L2 norm of `t` over every axis but `keep`, with those axes kept as size 1 (so that it scales
 * `t` by broadcasting): DoRA's weight norm. `keep` 0 gives a norm per output row or output channel
 * (Linear, convolutions); 1 gives one per embedding dimension, taken over the vocabulary (Embedding)
 * or per output unit of a fan_in_fan_out `[in, out]` weight.
 */
export function normExcept(t: tf.Tensor, keep: number): tf.Tensor {
  return tf.tidy(() => {
    const axes = t.shape.map((_, i) => i).filter((i) => i !== keep);
    return tf.sqrt(tf.sum(tf.square(t), axes, true));
  });
}

/**
 * DoRA's merged weight from the merged sum alone, for adapter files merged without a model:
 * (m / ‖W + ΔW‖) ⊙ (W + ΔW), the norm over every axis of `sum` = W + ΔW but `keep` (see {@link normExcept}).
 */
export function doraRescaled(sum: tf.Tensor, magnitude: tf.Tensor, keep: number): tf.Tensor {
  return tf.tidy(() => {
    const norm = normExcept(sum, keep);
    return tf.mul(sum, tf.div(tf.reshape(magnitude, norm.shape), norm));
  });
}

/**
 * What DoRA caches on one layer besides its `dora_base_norm_sq` buffer (‖W‖² per output unit of a
 * Linear base): the weight data that buffer was computed from, and the norms kept at merge time
 * (PEFT's `<adapter>-weight_norm` cache).
 */
interface DoraState {
  baseNormSource: object | null;
  mergeNorms: Map<string, tf.Tensor>;
}

const states = new WeakMap<TunerLayer, DoraState>();

/** What DoRA reads of a convolution layer (`LoraConv`) besides the TunerLayer surface. */
interface ConvLayer extends TunerLayer {
  loraProduct(name: string): tf.Tensor;
  readonly baseLayer: TunerLayer['baseLayer'] & { options: ConvOptions };
}

function stateOf(layer: TunerLayer): DoraState {
  let s = states.get(layer);
  if (!s) {
    s = { baseNormSource: null, mergeNorms: new Map() };
    states.set(layer, s);
  }
  return s;
}

/** The layer buffer (not state: rebuilt from the weight whenever that changes) holding ‖W‖² per output unit. */
const BASE_NORM_SQ = 'dora_base_norm_sq';

const MAGNITUDE = PEFT_SUFFIX.magnitude; // the module dict's name, and the saved key's suffix

function magnitudeOf(layer: TunerLayer, name: string): tf.Variable {
  return layer.variantModules<Magnitude>(MAGNITUDE).get(name).weight;
}

/** fan_in_fan_out: the (Linear) base weight is stored [in, out], so output units are its columns. */
function fifo(layer: TunerLayer, name: string): boolean {
  return layer.kind === 'linear' && (layer.settings.get(name)?.fanInFanOut ?? false);
}

/** The axis of the base weight that indexes what DoRA keeps one magnitude for. */
function keptAxis(layer: TunerLayer, name: string): number {
  if (layer.kind === 'embedding') return 1; // one per embedding dimension, over the vocabulary
  return fifo(layer, name) ? 1 : 0; // one per output unit: rows of [out, in] (columns of [in, out]) or output channels
}

/** m shaped to scale the base weight by broadcasting, as the norm {@link normExcept} gives it. */
function magnitudeForWeight(layer: TunerLayer, name: string): tf.Tensor {
  const m = magnitudeOf(layer, name);
  if (layer.kind === 'linear') return tf.expandDims(m, fifo(layer, name) ? 0 : 1);
  if (layer.kind === 'embedding') return tf.reshape(m, [1, -1]);
  // [1, out, 1(, 1)] → [out, 1, 1(, 1)], one factor per output channel of the kernel
  return tf.reshape(m, [-1, ...new Array(layer.baseLayer.weight.rank - 1).fill(1)]);
}

/**
 * B·A in the base kernel's shape for a convolution, unscaled, as PEFT's DoRA computes it
 * (`(B.view(-1, r) @ A.view(r, -1)).reshape(W.shape)`), kept as is for grouped convolutions so
 * that the magnitudes and outputs match PEFT's.
 */
function convProduct(layer: TunerLayer, name: string): tf.Tensor {
  return (layer as ConvLayer).loraProduct(name);
}

/** ‖W + s·B·A‖ per magnitude entry, shaped as {@link normExcept} gives it, for the current weights. */
function weightNorm(layer: TunerLayer, name: string): tf.Tensor {
  return tf.tidy(() => {
    const w = layer.baseLayer.weight;
    const delta =
      layer.kind === 'conv'
        ? tf.mul(convProduct(layer, name), layer.scaling.get(name) as number)
        : layer.getDeltaWeight(name);
    return normExcept(tf.add(w, delta), keptAxis(layer, name));
  });
}

/** ‖W‖² per output unit of a Linear base, recomputed when the base weight's data changed since it was cached. */
function baseNormSquared(layer: TunerLayer, name: string): tf.Tensor {
  const state = stateOf(layer);
  const w = layer.baseLayer.weight;
  const cached = layer.variantBuffer(BASE_NORM_SQ);
  if (cached && state.baseNormSource === w.dataId) return cached;
  layer.setVariantBuffer(
    BASE_NORM_SQ,
    tf.tidy(() => tf.sum(tf.square(w), fifo(layer, name) ? 0 : 1)),
  );
  state.baseNormSource = w.dataId;
  return layer.variantBuffer(BASE_NORM_SQ) as tf.Tensor;
}

/**
 * DoRA's weight norm ‖W + s·B·A‖ per output unit ([out]) of a Linear without building the [out, in]
 * matrices: ‖Wᵢ‖² + 2s·(W·Aᵀ)ᵢ·Bᵢ + s²·(B·A·Aᵀ)ᵢ·Bᵢ, with ‖Wᵢ‖² cached while the base weight stays the
 * same tensor (a merge, an unmerge or any assign gives the variable new data, which drops the cache).
 * Equal to the direct norm to float32 rounding relative to ‖W‖ (PEFT's fixtures hold at 1e-5).
 */
function linearNormFactored(layer: TunerLayer, name: string): tf.Tensor {
  const w = layer.baseLayer.weight;
  const transposed = fifo(layer, name);
  const a = layer.factorA(name); // [r, in]
  const b = layer.factorB(name); // [out, r]
  const s = layer.scaling.get(name) as number;
  // computed inside a custom gradient of zeros, so that none of it is recorded for backprop (the norm is detached)
  const norm = tf.customGrad(((wt: tf.Tensor, sq: tf.Tensor, at: tf.Tensor, bt: tf.Tensor) => {
    const wa = transposed ? tf.matMul(wt, at, true, true) : tf.matMul(wt, at, false, true); // W·Aᵀ, [out, r]
    const cross = tf.sum(tf.mul(wa, bt), 1);
    const quad = tf.sum(tf.mul(tf.matMul(bt, tf.matMul(at, at, false, true)), bt), 1);
    const value = tf.sqrt(tf.relu(tf.add(sq, tf.add(tf.mul(cross, 2 * s), tf.mul(quad, s * s)))));
    return { value, gradFunc: () => [wt, sq, at, bt].map((t) => tf.zerosLike(t)) };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...t: tf.Tensor[]) => tf.Tensor;
  return norm(w, baseNormSquared(layer, name), a, b);
}

/** The base layer's output without its bias, for input x: what DoRA rescales when dropout changed the input. */
function baseWithoutBias(layer: TunerLayer, name: string, x: tf.Tensor): tf.Tensor {
  const w = layer.baseLayer.weight;
  if (layer.kind === 'conv') return conv(x, w, null, (layer as ConvLayer).baseLayer.options);
  return fifo(layer, name) ? transposedLinear(x, w) : linear(x, w);
}

/**
 * DoRA for Linear (and TransposedLinear), Embedding, Conv1d and Conv2d layers, PEFT 0.21's DoRA variants.
 * Registered in `@lora/core` as `'dora'`, asked for by `useDora`.
 */
export const doraVariant: LoraVariant = {
  name: 'dora',
  configKey: 'use_dora',
  label: 'DoRA',
  trainableModules: [MAGNITUDE],
  mixedBatch: false,
  requested: ({ settings }) => settings.useDora === true,
  supports: (layer) => layer.kind === 'linear' || layer.kind === 'embedding' || layer.kind === 'conv',
  check(_layer, { settings }) {
    if (settings.loraBias)
      throw new LoraConfigError('The argument lora_bias=True is not supported for DoRA, please pass use_dora=False');
  },

  /** m starts as ‖W + ΔW‖ per magnitude entry, so that DoRA is a no-op at init when B = 0. */
  init(layer, name) {
    const shape =
      layer.kind === 'conv'
        ? // PEFT keeps the norm's keepdim shape, channels second: [1, out, 1(, 1)]
          [1, layer.baseLayer.weight.shape[0] as number, ...layer.baseLayer.weight.shape.slice(2).map(() => 1)]
        : [-1];
    const m = tf.tidy(() => tf.reshape(weightNorm(layer, name), shape));
    layer.variantModules<Magnitude>(MAGNITUDE).set(name, new Magnitude(m));
    // held from here on, so that forward passes allocate nothing that outlives them
    if (layer.kind === 'linear') baseNormSquared(layer, name);
  },

  forward(layer, name, x, result) {
    const scale = layer.scaling.get(name) as number;
    const m = magnitudeOf(layer, name);
    if (layer.kind === 'embedding') {
      // PEFT's DoraEmbeddingLayer: f = m / ‖W + ΔW‖ per dimension, the norm detached, scales the
      // running result as well as the adapter's part (no dropout on embeddings)
      const contribution = tf.mul(layer.lowRankForward(name, x), scale);
      const f = tf.div(m, tf.reshape(detach(weightNorm(layer, name)), m.shape));
      return tf.add(tf.mul(f, result), tf.mul(f, contribution));
    }
    // PEFT's DoraLinearLayer / _DoraConvNdLayer: f = m / ‖W + s·B·A‖ (the norm detached); the running
    // result minus the bias stands for the base output unless dropout is active in training, when
    // the base layer runs again on the dropped input.
    const dropped = layer.dropout(name).call(x) as tf.Tensor;
    const lora = layer.lowRankForward(name, dropped);
    const norm = layer.kind === 'linear' ? linearNormFactored(layer, name) : detach(weightNorm(layer, name));
    const f = tf.div(m, layer.kind === 'linear' ? norm : tf.reshape(norm, m.shape));
    const bias = layer.baseLayer.bias;
    const noDropout = (layer.settings.get(name)?.loraDropout ?? 0) === 0 || !layer.training;
    const base = noDropout
      ? bias
        ? tf.sub(result, layer.kind === 'linear' ? bias : tf.reshape(bias, m.shape))
        : result
      : baseWithoutBias(layer, name, dropped);
    return tf.add(result, tf.add(tf.mul(tf.sub(f, 1), base), tf.mul(tf.mul(f, lora), scale)));
  },

  /**
   * (m / ‖W₀ + ΔW‖) ⊙ (W + ΔW). As PEFT 0.21, the norm is taken on W₀, the base weight with the
   * adapters merged before taken out again (what forward sees), and kept for unmerge.
   */
  merge(layer, name, weight) {
    const delta = layer.getDeltaWeight(name);
    const norm = tf.keep(normExcept(tf.add(layer.unmergedBaseWeight(), delta), keptAxis(layer, name)));
    const norms = stateOf(layer).mergeNorms;
    norms.get(name)?.dispose();
    norms.set(name, norm);
    return tf.mul(tf.div(magnitudeForWeight(layer, name), norm), tf.add(weight, delta));
  },

  /** W / (m / ‖W₀ + ΔW‖) − ΔW, with the norm kept at merge time. */
  unmerge(layer, name, weight) {
    const norm = stateOf(layer).mergeNorms.get(name);
    if (!norm) throw new Error(`DoRA adapter '${name}' has no weight norm kept from its merge; was it merged?`);
    return tf.sub(tf.div(weight, tf.div(magnitudeForWeight(layer, name), norm)), layer.getDeltaWeight(name));
  },

  forgetMerge(layer, name) {
    const norms = stateOf(layer).mergeNorms;
    norms.get(name)?.dispose();
    norms.delete(name);
  },

  savedTensors: (layer, name) => ({ [MAGNITUDE]: magnitudeOf(layer, name) }),

  remove(layer, name) {
    doraVariant.forgetMerge?.(layer, name);
    // the ‖W‖² cache goes with the layer's last DoRA adapter
    const others = [...layer.settings.keys()].some((n) => n !== name && layer.variantOf(n) === doraVariant);
    if (!others && layer.variantBuffer(BASE_NORM_SQ)) layer.setVariantBuffer(BASE_NORM_SQ, null);
  },
};
