import * as tf from '@tensorflow/tfjs-core';
import { Conv1d, Conv2d, type Module, ModuleDict } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import { PEFT_SUFFIX } from '../files/peft-keys';
import type { AdapterSettings } from './adapter-settings';
import { LoraLayerBase, loraDropoutModule } from './lora-layer';
import { LoraConfigError } from '../errors';

type Conv = Conv1d | Conv2d;

/** PEFT's error for a merge into a grouped convolution. */
const GROUPED_MERGE = 'Merging is not supported for _ConvNd layers with groups > 1!';

/**
 * A Conv1d or Conv2d wrapped with LoRA adapters, as PEFT's `lora.Conv1d` / `lora.Conv2d`: `lora_A`
 * is a convolution in → r with the base's kernel size, stride and padding (dilation and groups not
 * copied, as PEFT); `lora_B` a 1×1 convolution r → out with the base's groups; `y = base(x) +
 * s·B(A(dropout(x)))`. ΔW = s·reshape(B·A) in the base kernel's shape. With `useDora`, the DoRA
 * variant rescales each output channel (see `variants/dora.ts`).
 *
 * Grouped base convolutions (groups > 1) take adapters whose rank is divisible by groups; their
 * B·A reads every input channel, so it has no place in the grouped kernel and cannot be merged (as PEFT).
 *
 * @example
 * ```ts
 * const layer = new LoraConv(new Conv2d(3, 64, 3, { padding: 1 }), 'default', settings);
 * ```
 */
export class LoraConv extends LoraLayerBase<Conv> {
  readonly kind = 'conv' as const;
  baseLayer: Conv;
  loraA: ModuleDict<Conv>;
  loraB: ModuleDict<Conv>;
  loraDropout: ModuleDict;

  constructor(base: Conv, adapterName: string, settings: AdapterSettings, config?: LoraConfig) {
    super();
    const groups = base.options.groups;
    if (groups > 1) console.warn('LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.');
    this.checkRank(base, settings.r);
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict<Conv>());
    this.loraB = this.registerModule('lora_B', new ModuleDict<Conv>());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.registerVariantModules();
    this.updateLayer(adapterName, settings, config);
    this.activeAdapters = [adapterName];
  }

  /** PEFT's rank checks: a positive integer, divisible by the base's groups (lora_B is grouped). */
  private checkRank(base: Conv, r: number): void {
    if (!Number.isInteger(r) || r <= 0)
      throw new LoraConfigError(`\`r\` should be a positive integer value but the value passed is ${r}`);
    const groups = base.options.groups;
    if (r % groups !== 0) {
      throw new LoraConfigError(
        `Targeting a ${base.constructor.name} with groups=${groups} and rank ${r}. Currently, support is limited to conv layers where the rank is divisible by groups. Either choose a different rank or do not target this specific layer.`,
      );
    }
  }

  protected checkSettings(_name: string, s: AdapterSettings): void {
    this.checkRank(this.baseLayer, s.r);
  }

  private make(
    inC: number,
    outC: number,
    kernel: number[],
    options: {
      stride?: number | number[];
      padding?: number | number[] | 'valid' | 'same';
      groups?: number;
      bias: boolean;
    },
  ): Conv {
    return this.baseLayer instanceof Conv2d
      ? new Conv2d(inC, outC, kernel, options)
      : new Conv1d(inC, outC, kernel, options);
  }

  /**
   * A, then B, drawn with PyTorch's default convolution initialisation (PEFT's `_ConvNd`); the init
   * registry then re-initialises: `true` (and `'lora_ga'`, which PEFT falls back from on
   * convolutions) kaiming-uniform A, `'gaussian'` N(0, 1/r²) A, B zero; `false` keeps the draws.
   */
  protected createAdapterWeights(name: string, s: AdapterSettings): void {
    const base = this.baseLayer;
    if (s.loraBias && !base.bias) {
      console.warn(
        `\`lora_bias=True\` was passed but the targeted layer of type ${base.constructor.name} has no bias. This means that merging LoRA weights won't be possible.`,
      );
    }
    const k = base.kernelSize;
    this.loraA.set(
      name,
      this.make(base.inChannels, s.r, k, { stride: base.options.stride, padding: base.options.padding, bias: false }),
    );
    this.loraB.set(
      name,
      this.make(
        s.r,
        base.outChannels,
        k.map(() => 1),
        { groups: base.options.groups, bias: s.loraBias },
      ),
    );
    this.loraDropout.set(name, loraDropoutModule(s.loraDropout));
  }

  protected removeAdapterWeights(name: string): void {
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
  }

  dropout(name: string): Module {
    return this.loraDropout.get(name);
  }

  /** B(A(x)), unscaled. */
  lowRankForward(name: string, x: tf.Tensor): tf.Tensor {
    return this.loraB.get(name).call(this.loraA.get(name).call(x)) as tf.Tensor;
  }

  /**
   * B·A reshaped into the base kernel's shape, unscaled, as PEFT computes it
   * (`(B.view(-1, r) @ A.view(r, -1)).reshape(W.shape)`). For grouped convolutions this is PEFT's
   * reshape of an [out/groups, in·∏k] product, kept as is so that DoRA's magnitudes and outputs match.
   */
  loraProduct(name: string): tf.Tensor {
    return tf.tidy(() => {
      const r = this.settings.get(name)?.r as number;
      return tf.reshape(
        tf.matMul(tf.reshape(this.factorB(name), [-1, r]), tf.reshape(this.factorA(name), [r, -1])),
        this.baseLayer.weight.shape,
      );
    });
  }

  override loraBias(name: string): tf.Variable | null {
    return this.loraB.get(name).bias;
  }

  protected override mergedWeight(name: string, w: tf.Tensor, safe: boolean): tf.Tensor {
    if (this.baseLayer.options.groups > 1) throw new Error(GROUPED_MERGE);
    return super.mergedWeight(name, w, safe);
  }

  factorA(name: string): tf.Variable {
    return this.loraA.get(name).weight;
  }

  factorB(name: string): tf.Variable {
    return this.loraB.get(name).weight;
  }

  /**
   * ΔW = s·reshape(B·A) in the base kernel's shape. The caller owns it. A grouped convolution has
   * none: B·A reads every input channel, the grouped kernel only its group's.
   */
  getDeltaWeight(name: string): tf.Tensor {
    if (!this.settings.has(name)) throw new Error(`adapter '${name}' is not on this layer`);
    const groups = this.baseLayer.options.groups;
    if (groups > 1) {
      throw new Error(
        `adapter '${name}' on a ${this.baseLayer.constructor.name} with groups=${groups} has no ΔW in the grouped kernel's shape [${this.baseLayer.weight.shape.join(', ')}]. ${GROUPED_MERGE}`,
      );
    }
    return tf.tidy(() => tf.mul(this.loraProduct(name), this.scaling.get(name) as number));
  }

  protected ownTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {
      [PEFT_SUFFIX.loraA]: this.factorA(name),
      [PEFT_SUFFIX.loraB]: this.factorB(name),
    };
    const bias = this.loraB.get(name).bias;
    if (bias) out[PEFT_SUFFIX.loraBBias] = bias;
    return out;
  }
}
