import { LoraConfigError } from '../errors';
import * as tf from '@tensorflow/tfjs-core';
import { Conv1d, Conv2d, ModuleDict, conv, kaimingUniformDefault, normalInit } from '@lora/nn';
import { Magnitude, detach, normExcept } from '../variants/dora';
import { LoraLayerBase, loraDropoutModule } from './lora-layer';
import type { AdapterSettings } from './lora-linear';

type Conv = Conv1d | Conv2d;

/** PEFT's error for a merge into a grouped convolution. */
const GROUPED_MERGE = 'Merging is not supported for _ConvNd layers with groups > 1!';

/**
 * A Conv1d or Conv2d wrapped with LoRA adapters, as PEFT's `lora.Conv1d` / `lora.Conv2d`: `lora_A`
 * is a convolution in → r with the base's kernel size, stride and padding (dilation and groups not
 * copied, as PEFT); `lora_B` a 1×1 convolution r → out with the base's groups; `y = base(x) +
 * s·B(A(dropout(x)))`. ΔW = s·reshape(B·A) in the base kernel's shape. With `useDora`, a magnitude
 * `[1, out, 1(, 1)]` rescales each output channel by m / ‖W + ΔW‖ (the norm over the input channels
 * and kernel taps), as PEFT's `DoraConv1dLayer` / `DoraConv2dLayer`.
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
  baseLayer: Conv;
  loraA: ModuleDict<Conv>;
  loraB: ModuleDict<Conv>;
  loraDropout: ModuleDict;
  loraMagnitudeVector: ModuleDict<Magnitude>;

  constructor(base: Conv, adapterName: string, settings: AdapterSettings) {
    super();
    const groups = base.options.groups;
    if (groups > 1) console.warn('LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.');
    this.checkRank(base, settings.r);
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict<Conv>());
    this.loraB = this.registerModule('lora_B', new ModuleDict<Conv>());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.loraMagnitudeVector = this.registerModule('lora_magnitude_vector', new ModuleDict<Magnitude>());
    this.updateLayer(adapterName, settings);
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
   * Adds (or replaces) an adapter. Construction draws A, then B, with PyTorch's default convolution
   * initialisation; `initLoraWeights` then re-initialises as PEFT's `_ConvNd`: `true` (and
   * `'lora_ga'`, which PEFT falls back from on convolutions) kaiming-uniform A, `'gaussian'`
   * N(0, 1/r²) A, B zero; `false` keeps the draws. PEFT has no other initialisation for convolutions.
   * A DoRA magnitude starts as ‖W + ΔW‖ per output channel.
   */
  updateLayer(name: string, s: AdapterSettings): void {
    const base = this.baseLayer;
    this.checkRank(base, s.r);
    if (s.useDora && s.loraBias)
      throw new LoraConfigError('The argument lora_bias=True is not supported for DoRA, please pass use_dora=False');
    const init = s.initLoraWeights;
    if (init === 'loftq') {
      throw new LoraConfigError(
        `init_lora_weights='loftq' is not supported on ${base.constructor.name} layers (PEFT 0.21 fails there too: LoraLayer.loftq_init() missing 1 required positional argument: 'config'); leave this layer out of target_modules`,
      );
    }
    if (init !== true && init !== false && init !== 'gaussian' && init !== 'lora_ga') {
      throw new LoraConfigError(
        `Unknown initialization init_lora_weights='${String(init)}' (a ${base.constructor.name} takes true, false, 'gaussian' or 'lora_ga', as in PEFT)`,
      );
    }
    if (s.loraBias && !base.bias) {
      console.warn(
        `\`lora_bias=True\` was passed but the targeted layer of type ${base.constructor.name} has no bias. This means that merging LoRA weights won't be possible.`,
      );
    }
    if (this.settings.has(name)) this.deleteAdapter(name);
    const k = base.kernelSize;
    const a = this.make(base.inChannels, s.r, k, {
      stride: base.options.stride,
      padding: base.options.padding,
      bias: false,
    });
    const b = this.make(
      s.r,
      base.outChannels,
      k.map(() => 1),
      { groups: base.options.groups, bias: s.loraBias },
    );
    if (init !== false) {
      const fanIn = base.inChannels * k.reduce((x, y) => x * y, 1);
      a.setParameter(
        'weight',
        init === 'gaussian' ? normalInit(a.weight.shape, 1 / s.r) : kaimingUniformDefault(a.weight.shape, fanIn),
      );
      b.setParameter('weight', tf.zeros(b.weight.shape));
      if (b.bias) b.setParameter('bias', tf.zeros(b.bias.shape));
    }
    this.loraA.set(name, a);
    this.loraB.set(name, b);
    this.loraDropout.set(name, loraDropoutModule(s.loraDropout));
    this.storeSettings(name, s);
    if (s.useDora) {
      // PEFT keeps the norm's keepdim shape, channels second: [1, out, 1(, 1)]
      const m = tf.tidy(() => tf.reshape(this.doraNorm(name), [1, base.outChannels, ...k.map(() => 1)]));
      this.loraMagnitudeVector.set(name, new Magnitude(m));
    }
  }

  /**
   * B·A reshaped into the base kernel's shape, unscaled, as PEFT's DoRA computes it
   * (`(B.view(-1, r) @ A.view(r, -1)).reshape(W.shape)`). For grouped convolutions this is PEFT's
   * reshape of an [out/groups, in·∏k] product, kept as is so that the magnitudes and outputs match.
   */
  private doraLoraWeight(name: string): tf.Tensor {
    return tf.tidy(() => {
      const r = this.settings.get(name)?.r as number;
      return tf.reshape(
        tf.matMul(tf.reshape(this.factorB(name), [-1, r]), tf.reshape(this.factorA(name), [r, -1])),
        this.baseLayer.weight.shape,
      );
    });
  }

  /** ‖W + s·B·A‖ per output channel, [out, 1, 1(, 1)], for the current weights. */
  private doraNorm(name: string): tf.Tensor {
    return tf.tidy(() =>
      this.doraWeightNorm(
        name,
        tf.add(this.baseLayer.weight, tf.mul(this.doraLoraWeight(name), this.scaling.get(name) as number)),
      ),
    );
  }

  protected removeAdapterWeights(name: string): void {
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
    this.loraMagnitudeVector.delete(name)?.dispose();
  }

  protected addAdapterOutput(result: tf.Tensor, x: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor {
    const scale = this.scaling.get(name) as number;
    const dropped = this.loraDropout.get(name).call(x) as tf.Tensor;
    const lora = this.loraB.get(name).call(this.loraA.get(name).call(dropped)) as tf.Tensor;
    const settings = this.settings.get(name) as AdapterSettings;
    if (!settings.useDora) {
      const contribution = tf.mul(lora, scale);
      return tf.add(result, rows ? tf.mul(contribution, rows) : contribution);
    }
    // DoRA (PEFT's _DoraConvNdLayer): f = m / ‖W + s·B·A‖ per output channel, the norm detached;
    // the running result minus the bias stands for the base output unless dropout is active in
    // training, when the base convolution runs again on the dropped input.
    const base = this.baseLayer;
    const m = this.loraMagnitudeVector.get(name).weight;
    const f = tf.div(m, tf.reshape(detach(this.doraNorm(name)), m.shape));
    let baseOut: tf.Tensor;
    if (settings.loraDropout === 0 || !this.training)
      baseOut = base.bias ? tf.sub(result, tf.reshape(base.bias, m.shape)) : result;
    else baseOut = conv(dropped, base.weight, null, base.options);
    return tf.add(result, tf.add(tf.mul(tf.sub(f, 1), baseOut), tf.mul(tf.mul(f, lora), scale)));
  }

  protected override loraBias(name: string): tf.Tensor | null {
    return this.loraB.get(name).bias;
  }

  /** One norm per output channel, over the input channels and kernel taps: [out, 1, 1(, 1)]. */
  protected override doraWeightNorm(_name: string, weight: tf.Tensor): tf.Tensor {
    return normExcept(weight, 0);
  }

  protected override doraMagnitude(name: string): tf.Tensor {
    // [1, out, 1(, 1)] → [out, 1, 1(, 1)], one factor per output channel of the kernel
    return tf.reshape(this.loraMagnitudeVector.get(name).weight, [
      -1,
      ...new Array(this.baseLayer.weight.rank - 1).fill(1),
    ]);
  }

  protected override mergedWeight(name: string, w: tf.Tensor): tf.Tensor {
    if (this.baseLayer.options.groups > 1) throw new Error(GROUPED_MERGE);
    return super.mergedWeight(name, w);
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
    return tf.tidy(() => tf.mul(this.doraLoraWeight(name), this.scaling.get(name) as number));
  }

  /** The adapter's tensors by the key suffix PEFT saves them under (DoRA's magnitude without `.weight`). */
  savedTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {
      'lora_A.weight': this.factorA(name),
      'lora_B.weight': this.factorB(name),
    };
    const bias = this.loraB.get(name).bias;
    if (bias) out['lora_B.bias'] = bias;
    if (this.loraMagnitudeVector.has(name)) out.lora_magnitude_vector = this.loraMagnitudeVector.get(name).weight;
    return out;
  }
}
