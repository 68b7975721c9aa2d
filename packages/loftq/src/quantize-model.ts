import type * as tf from '@tensorflow/tfjs-core';
import { isTunerLayer, loraConfig, resolveTargets } from '@lora/core';
import { Linear, type Module, withoutInit } from '@lora/nn';
import { QuantizationError } from './errors';
import { type QuantizedFormat, formatOfBits } from './packed-weight';
import { QuantizedLinear, type QuantizedLinearOptions, checkLayerOptions } from './quantized-linear';

/** Options of {@link quantizeModel}. */
export interface QuantizeModelOptions extends QuantizedLinearOptions {
  /**
   * Which Linear modules to quantize, with PEFT's `target_modules` rules (a list: suffix match; a string:
   * a regular expression on the full path). Default `'all-linear'`: every Linear but the output layer
   * (`lm_head`), which bitsandbytes' transformers integration keeps in full precision too.
   */
  targetModules?: string[] | string;
  /** Called after each layer is quantized. */
  onLayer?: (layer: { path: string; index: number; total: number; bytesBefore: number; bytesAfter: number }) => void;
}

/** What {@link quantizeModel} did. */
export interface QuantizeModelResult {
  format: QuantizedFormat;
  /** The paths now holding a {@link QuantizedLinear}. */
  quantized: string[];
  /** Targets left as they were, and why (a tied weight, a layer kind without a quantized form). */
  skipped: { path: string; reason: string }[];
  /** Bytes the quantized layers held before and hold now (weights, scales, biases). */
  bytesBefore: number;
  bytesAfter: number;
}

/**
 * Replaces the Linear layers of any `@lora/nn` module tree by {@link QuantizedLinear}s holding their
 * weights in 4 bits (bitsandbytes' NF4, the default), 3 or 2 bits (the LoftQ authors' normal float) or
 * 8 bits (int8), dequantized inside each forward: QLoRA's base, so that LoRA trains over a small base
 * on every backend (`getPeftModel` wraps these layers once `@lora/loftq` is imported). Layer by layer:
 * each float weight is freed as soon as its quantized form exists, so memory stays near the model plus
 * one layer. Everything is checked before the first layer changes (bits, block sizes, targets): a
 * mistake leaves the model as it was.
 *
 * Quantize before `getPeftModel`. A Linear whose weight another module shares (a tied embedding) is
 * skipped, as is a TransposedLinear (transformers' Conv1D).
 *
 * @example
 * ```ts
 * const report = quantizeModel(model, { bits: 4 });       // every Linear but lm_head
 * console.log(report.bytesBefore, '→', report.bytesAfter);
 * const peft = getPeftModel(model, { r: 16, loraAlpha: 32, targetModules: ['q_proj', 'v_proj'] });
 * ```
 */
export function quantizeModel(model: Module, options: QuantizeModelOptions = {}): QuantizeModelResult {
  const fn = 'quantizeModel';
  const format = formatOfBits(options.bits ?? 4, fn);
  for (const [path, m] of model.namedModules())
    if (isTunerLayer(m))
      throw new QuantizationError(
        'model',
        `${fn}: '${path}' is already a LoRA layer; quantize the base model first, then call getPeftModel`,
      );
  const targets = resolveTargets(model, loraConfig({ targetModules: options.targetModules ?? 'all-linear' })).targeted;
  // who holds each parameter: a weight shared with another module (tied) cannot be replaced in one place
  const holders = new Map<tf.Variable, string[]>();
  for (const [path, m] of model.namedModules())
    for (const [name, p] of m.namedParameters('', false))
      holders.set(p, [...(holders.get(p) ?? []), `${path}.${name}`]);
  const plan: [string, Linear][] = [];
  const skipped: { path: string; reason: string }[] = [];
  for (const path of targets) {
    const m = model.getSubmodule(path);
    if (m instanceof QuantizedLinear) {
      skipped.push({ path, reason: `already quantized (${m.format})` });
      continue;
    }
    if (!(m instanceof Linear)) {
      skipped.push({ path, reason: `a ${m.constructor.name} has no quantized form here (Linear layers only)` });
      continue;
    }
    const shared = (holders.get(m.weight) ?? []).filter((h) => h !== `${path}.weight`);
    if (shared.length) {
      skipped.push({ path, reason: `its weight is shared with ${shared.join(', ')} (tied)` });
      continue;
    }
    try {
      checkLayerOptions(m, options, fn);
    } catch (e) {
      if (e instanceof QuantizationError)
        throw new QuantizationError(e.option, `${e.message.replace(`${fn}: `, `${fn}: '${path}': `)}`);
      throw e;
    }
    plan.push([path, m]);
  }
  let bytesBefore = 0;
  let bytesAfter = 0;
  const quantized: string[] = [];
  for (const [index, [path, linear]] of plan.entries()) {
    const q = QuantizedLinear.fromLinear(linear, options);
    const before = 4 * (linear.weight.size + (linear.bias?.size ?? 0));
    q.training = linear.training;
    model.setSubmodule(path, q);
    linear.dispose();
    bytesBefore += before;
    bytesAfter += q.bytes;
    quantized.push(path);
    options.onLayer?.({ path, index, total: plan.length, bytesBefore: before, bytesAfter: q.bytes });
  }
  return { format, quantized, skipped, bytesBefore, bytesAfter };
}

/**
 * Replaces every {@link QuantizedLinear} of a module tree by a Linear holding its dequantized weight
 * (what a LoftQ or QLoRA base looks like in full precision: to save it, or to merge an adapter
 * without rounding). Returns the paths replaced.
 *
 * @example
 * ```ts
 * dequantizeModel(model); // model's Linear layers hold Q in float32 again
 * ```
 */
export function dequantizeModel(model: Module): string[] {
  const paths: string[] = [];
  for (const [path, m] of [...model.namedModules()]) {
    if (!(m instanceof QuantizedLinear) || path === '') continue;
    const w = m.dequantize();
    const linear = withoutInit(() => new Linear(m.inFeatures, m.outFeatures, { bias: m.bias !== null }));
    linear.weight.assign(w);
    w.dispose();
    if (m.bias) linear.bias?.assign(m.bias);
    linear.requiresGrad(false);
    linear.training = m.training;
    model.setSubmodule(path, linear);
    m.dispose();
    paths.push(path);
  }
  return paths;
}

/**
 * The bytes a module tree holds on the backend: every parameter and buffer (packed words and scales
 * of quantized layers included), each counted once.
 *
 * @example
 * ```ts
 * const before = modelBytes(model);
 * quantizeModel(model, { bits: 4 });
 * console.log(before, modelBytes(model));
 * ```
 */
export function modelBytes(model: Module): number {
  const seen = new Set<tf.Tensor>();
  let bytes = 0;
  const tensors = [...[...model.namedParameters()].map(([, p]) => p), ...[...model.namedBuffers()].map(([, b]) => b)];
  for (const t of tensors) {
    if (seen.has(t)) continue;
    seen.add(t);
    bytes += 4 * t.size;
  }
  return bytes;
}
