// A method package's own code: what it registers lives here; register.js registers it.
import * as tf from '@tensorflow/tfjs-core';
import { Identity, LoraLayerBase } from '@lora/core';
import { Linear, Module, ModuleDict } from '@lora/nn';

/** init_lora_weights = 'fixture_ones': A and B all ones (a non-zero ΔW to check by hand); the path is recorded. */
export const initialised = [];
export function onesInit(ctx) {
  initialised.push({ path: ctx.path, kind: ctx.kind, gate: ctx.config.extra.gate_config?.gate ?? null });
  ctx.loraA.assign(tf.onesLike(ctx.loraA));
  ctx.loraB.assign(tf.onesLike(ctx.loraB));
}

/** gate per adapter, per layer: the variant's own state, read from the adapter's config at init */
const gates = new WeakMap();
const gateOf = (layer, name) => gates.get(layer).get(name);

/**
 * A variant asked for by `extra.gate_config`: the adapter's contribution (forward and merge) times
 * `gate`. Linear-kind layers only.
 */
export const gatedVariant = {
  name: 'fixture_gated',
  configKey: 'gate_config',
  label: 'Gated LoRA',
  requested: ({ config }) => config.extra?.gate_config != null,
  supports: (layer) => layer.kind === 'linear',
  init(layer, name, { config }) {
    if (!gates.has(layer)) gates.set(layer, new Map());
    gates.get(layer).set(name, config.extra.gate_config.gate);
  },
  forward(layer, name, x, result) {
    const lora = layer.lowRankForward(name, layer.dropout(name).call(x));
    return tf.add(result, tf.mul(lora, layer.scaling.get(name) * gateOf(layer, name)));
  },
  merge: (layer, name, weight) => tf.add(weight, tf.mul(layer.getDeltaWeight(name), gateOf(layer, name))),
  unmerge: (layer, name, weight) => tf.sub(weight, tf.mul(layer.getDeltaWeight(name), gateOf(layer, name))),
  remove: (layer, name) => gates.get(layer)?.delete(name),
};

/** A base layer @lora/core does not know (not a Linear): y = x·Wᵀ with a frozen weight. */
export class FrozenLinear extends Module {
  constructor(inFeatures, outFeatures) {
    super();
    this.weight = this.registerParameter('weight', tf.randomNormal([outFeatures, inFeatures], 0, 1, 'float32', 3), false);
    this.bias = null;
  }
  forward(x) {
    return tf.matMul(x, this.weight, false, true);
  }
}

/** The LoRA layer the dispatcher makes for a FrozenLinear: a LoraLayerBase with Linear-shaped factors. */
export class LoraFrozenLinear extends LoraLayerBase {
  kind = 'linear';
  constructor(base, adapterName, settings, config) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict());
    this.loraB = this.registerModule('lora_B', new ModuleDict());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.updateLayer(adapterName, settings, config);
    this.activeAdapters = [adapterName];
  }
  checkSettings(_name, s) {
    if (!Number.isInteger(s.r) || s.r <= 0) throw new Error(`bad r ${s.r}`);
  }
  createAdapterWeights(name, s) {
    const [out, inF] = this.baseLayer.weight.shape;
    this.loraA.set(name, new Linear(inF, s.r, { bias: false }));
    this.loraB.set(name, new Linear(s.r, out, { bias: false }));
    this.loraDropout.set(name, new Identity());
  }
  removeAdapterWeights(name) {
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
  }
  ownTensors(name) {
    return { 'lora_A.weight': this.factorA(name), 'lora_B.weight': this.factorB(name) };
  }
  getDeltaWeight(name) {
    return tf.tidy(() => tf.mul(tf.matMul(this.factorB(name), this.factorA(name)), this.scaling.get(name)));
  }
  factorA(name) {
    return this.loraA.get(name).weight;
  }
  factorB(name) {
    return this.loraB.get(name).weight;
  }
  lowRankForward(name, x) {
    return this.loraB.get(name).call(this.loraA.get(name).call(x));
  }
  dropout(name) {
    return this.loraDropout.get(name);
  }
}

/** The dispatcher: FrozenLinear targets become LoraFrozenLinear layers; anything else is left to others. */
export function frozenDispatcher({ target, adapterName, settings, config }) {
  return target instanceof FrozenLinear ? new LoraFrozenLinear(target, adapterName, settings, config) : null;
}
