import * as tf from '@tensorflow/tfjs-core';
import { Conv1d, Conv2d, Dropout, Module, ModuleDict, kaimingUniformDefault, normalInit } from '@lora/nn';
import { loraScaling } from './lora-config';
import type { AdapterSettings } from './lora-linear';

type Conv = Conv1d | Conv2d;

class Identity extends Module {
  forward(x: tf.Tensor): tf.Tensor {
    return x;
  }
}

/**
 * A Conv1d or Conv2d wrapped with LoRA adapters, as PEFT's `lora.Conv1d` / `lora.Conv2d`: `lora_A`
 * is a convolution in → r with the base's kernel size, stride and padding (dilation and groups not
 * copied, as PEFT); `lora_B` a 1×1 convolution r → out; `y = base(x) + s·B(A(dropout(x)))`.
 * ΔW = s·reshape(B·A) in the base kernel's shape. Base convolutions with groups > 1 are not supported yet.
 *
 * @example
 * ```ts
 * const layer = new LoraConv(new Conv2d(3, 64, 3, { padding: 1 }), 'default', settings);
 * ```
 */
export class LoraConv extends Module {
  baseLayer: Conv;
  loraA: ModuleDict<Conv>;
  loraB: ModuleDict<Conv>;
  loraDropout: ModuleDict;
  readonly settings = new Map<string, AdapterSettings>();
  readonly scaling = new Map<string, number>();
  activeAdapters: string[] = [];
  disableAdapters = false;
  readonly mergedAdapters: string[] = [];
  batchAdapterNames: string[] | null = null;

  constructor(base: Conv, adapterName: string, settings: AdapterSettings) {
    super();
    if (base.options.groups !== 1) throw new Error(`Targeting a ${base.constructor.name} with groups=${base.options.groups} is not supported in @lora/core yet`);
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict<Conv>());
    this.loraB = this.registerModule('lora_B', new ModuleDict<Conv>());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.updateLayer(adapterName, settings);
    this.activeAdapters = [adapterName];
  }

  private make(inC: number, outC: number, kernel: number[], options: { stride?: number | number[]; padding?: number | number[] | 'valid' | 'same'; bias: boolean }): Conv {
    return this.baseLayer instanceof Conv2d ? new Conv2d(inC, outC, kernel, options) : new Conv1d(inC, outC, kernel, options);
  }

  updateLayer(name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0) throw new Error(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.useDora) throw new Error('DoRA on convolutions is not implemented in @lora/core yet');
    if (this.settings.has(name)) this.deleteAdapter(name);
    const base = this.baseLayer;
    const k = base.kernelSize;
    const a = this.make(base.inChannels, s.r, k, { stride: base.options.stride, padding: base.options.padding, bias: false });
    const b = this.make(s.r, base.outChannels, k.map(() => 1), { bias: s.loraBias });
    const init = s.initLoraWeights;
    if (init === true || init === 'gaussian') {
      const fanIn = base.inChannels * k.reduce((x, y) => x * y, 1);
      a.setParameter('weight', init === true ? kaimingUniformDefault(a.weight.shape, fanIn) : normalInit(a.weight.shape, 1 / s.r));
      b.setParameter('weight', tf.zeros(b.weight.shape));
      if (b.bias) b.setParameter('bias', tf.zeros(b.bias.shape));
    } else if (init !== false) {
      a.dispose();
      b.dispose();
      throw new Error(`Unknown initialization init_lora_weights='${String(init)}' for a convolution in @lora/core`);
    }
    this.loraA.set(name, a);
    this.loraB.set(name, b);
    this.loraDropout.set(name, s.loraDropout > 0 ? new Dropout(s.loraDropout) : new Identity());
    this.settings.set(name, { ...s });
    this.scaling.set(name, loraScaling(s.loraAlpha, s.r, s.useRslora));
  }

  deleteAdapter(name: string): void {
    if (!this.settings.has(name)) return;
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
    this.settings.delete(name);
    this.scaling.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
    const merged = this.mergedAdapters.indexOf(name);
    if (merged >= 0) this.mergedAdapters.splice(merged, 1);
  }

  forward(x: tf.Tensor): tf.Tensor {
    if (this.disableAdapters) {
      if (this.mergedAdapters.length) this.unmerge();
      return this.baseLayer.call(x);
    }
    if (this.mergedAdapters.length && !this.batchAdapterNames) return this.baseLayer.call(x);
    const names = this.batchAdapterNames;
    return tf.tidy(() => {
      let result = this.baseLayer.call(x) as tf.Tensor;
      for (const name of names ? new Set(names) : this.activeAdapters) {
        if (!this.settings.has(name)) continue;
        const lora = this.loraB.get(name).call(this.loraA.get(name).call(this.loraDropout.get(name).call(x))) as tf.Tensor;
        let contribution = tf.mul(lora, this.scaling.get(name) as number);
        if (names) contribution = tf.mul(contribution, tf.tensor(names.map((n) => (n === name ? 1 : 0)), [names.length, ...new Array(result.rank - 1).fill(1)]));
        result = tf.add(result, contribution);
      }
      return result;
    });
  }

  factorA(name: string): tf.Variable {
    return this.loraA.get(name).weight;
  }

  factorB(name: string): tf.Variable {
    return this.loraB.get(name).weight;
  }

  /** ΔW = s·reshape(B·A) in the base kernel's shape. The caller owns it. */
  getDeltaWeight(name: string): tf.Tensor {
    if (!this.settings.has(name)) throw new Error(`adapter '${name}' is not on this layer`);
    return tf.tidy(() => {
      const r = this.settings.get(name)?.r as number;
      const a = tf.reshape(this.factorA(name), [r, -1]);
      const b = tf.reshape(this.factorB(name), [-1, r]);
      return tf.reshape(tf.mul(tf.matMul(b, a), this.scaling.get(name) as number), this.baseLayer.weight.shape);
    });
  }

  savedTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = { 'lora_A.weight': this.factorA(name), 'lora_B.weight': this.factorB(name) };
    const bias = this.loraB.get(name).bias;
    if (bias) out['lora_B.bias'] = bias;
    return out;
  }

  merge(options: { adapterNames?: string[]; safeMerge?: boolean } = {}): void {
    const names = (options.adapterNames ?? this.activeAdapters).filter((n) => this.settings.has(n) && !this.mergedAdapters.includes(n));
    for (const name of names) {
      const w = this.baseLayer.weight;
      const merged = tf.tidy(() => tf.add(w, this.getDeltaWeight(name)));
      if (options.safeMerge && !tf.tidy(() => tf.all(tf.isFinite(merged)).dataSync()[0])) {
        merged.dispose();
        throw new Error(`NaNs detected in the merged weights. The adapter ${name} seems to be broken`);
      }
      w.assign(merged);
      merged.dispose();
      const loraBias = this.loraB.get(name).bias;
      if (loraBias) {
        const bias = this.baseLayer.bias;
        if (!bias) throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
        tf.tidy(() => bias.assign(tf.add(bias, tf.mul(loraBias, this.scaling.get(name) as number))));
      }
      this.mergedAdapters.push(name);
    }
  }

  unmerge(): void {
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop() as string;
      const w = this.baseLayer.weight;
      tf.tidy(() => w.assign(tf.sub(w, this.getDeltaWeight(name))));
      const loraBias = this.loraB.get(name).bias;
      if (loraBias && this.baseLayer.bias) {
        const bias = this.baseLayer.bias;
        tf.tidy(() => bias.assign(tf.sub(bias, tf.mul(loraBias, this.scaling.get(name) as number))));
      }
    }
  }
}
