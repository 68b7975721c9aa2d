import * as tf from '@tensorflow/tfjs-core';
import { Conv1d, Conv2d, Dropout, ModuleDict, kaimingUniformDefault, normalInit } from '@lora/nn';
import { loraScaling } from './lora-config';
import { Identity, LoraLayerBase } from './lora-layer';
import type { AdapterSettings } from './lora-linear';

type Conv = Conv1d | Conv2d;


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
export class LoraConv extends LoraLayerBase<Conv> {
  baseLayer: Conv;
  loraA: ModuleDict<Conv>;
  loraB: ModuleDict<Conv>;
  loraDropout: ModuleDict;

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

  protected removeAdapterWeights(name: string): void {
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
  }

  protected addAdapterOutput(result: tf.Tensor, x: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor {
    const lora = this.loraB.get(name).call(this.loraA.get(name).call(this.loraDropout.get(name).call(x))) as tf.Tensor;
    const contribution = tf.mul(lora, this.scaling.get(name) as number);
    return tf.add(result, rows ? tf.mul(contribution, rows) : contribution);
  }

  protected override loraBias(name: string): tf.Tensor | null {
    return this.loraB.get(name).bias;
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
}
