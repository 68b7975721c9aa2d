import * as tf from '@tensorflow/tfjs-core';
import { addLowRank, fusedLoraActive, linearLowRank } from '@lora/kernels';
import { Linear, type Module, ModuleDict, TransposedLinear } from '@lora/nn';
import type { LoraConfig } from '../lora-config';
import { PEFT_SUFFIX } from '../files/peft-keys';
import type { AdapterSettings } from './adapter-settings';
import { LoraLayerBase, loraDropoutModule } from './lora-layer';
import { LoraConfigError } from '../errors';

export type { AdapterSettings } from './adapter-settings';

/**
 * A Linear wrapped with LoRA adapters, as PEFT's `lora.Linear`: the original layer as `base_layer`,
 * per-adapter `lora_A` ([r, in]) and `lora_B` ([out, r]) Linears and `lora_dropout`, and
 * `y = base(x) + Σ_active s·B(A(dropout(x)))` with `s = α/r` (or `α/√r` with rsLoRA).
 * The base may also be a {@link TransposedLinear} (transformers' `Conv1D`, weight `[in, out]`): PEFT's
 * `fan_in_fan_out`, where A and B keep their layouts and ΔW is transposed into the base's.
 * Initialisations come from the init registry, variants (DoRA) own their adapters' forward and merge.
 *
 * @example
 * ```ts
 * const layer = new LoraLinear(new Linear(64, 64), 'default', { r: 8, loraAlpha: 16, loraDropout: 0, useRslora: false, initLoraWeights: true, loraBias: false, fanInFanOut: false });
 * ```
 */
export class LoraLinear extends LoraLayerBase<Linear | TransposedLinear> {
  readonly kind = 'linear' as const;
  baseLayer: Linear | TransposedLinear;
  loraA: ModuleDict<Linear>;
  loraB: ModuleDict<Linear>;
  loraDropout: ModuleDict;

  constructor(base: Linear | TransposedLinear, adapterName: string, settings: AdapterSettings, config?: LoraConfig) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict<Linear>());
    this.loraB = this.registerModule('lora_B', new ModuleDict<Linear>());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.registerVariantModules();
    this.updateLayer(adapterName, settings, config);
    this.activeAdapters = [adapterName];
  }

  get inFeatures(): number {
    return this.baseLayer.inFeatures;
  }

  get outFeatures(): number {
    return this.baseLayer.outFeatures;
  }

  /** The base weight is `[in, out]` (a TransposedLinear, transformers' Conv1D): PEFT's `fan_in_fan_out`. */
  get fanInFanOut(): boolean {
    return this.baseLayer instanceof TransposedLinear;
  }

  override settingsFor(settings: AdapterSettings): AdapterSettings {
    return { ...settings, fanInFanOut: this.fanInFanOut };
  }

  protected checkSettings(_name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0)
      throw new LoraConfigError(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.fanInFanOut !== this.fanInFanOut) {
      throw new LoraConfigError(
        `fanInFanOut is ${s.fanInFanOut} but the base layer is a ${this.baseLayer.constructor.name}, whose weight is stored ${this.fanInFanOut ? '[in, out]' : '[out, in]'}; ` +
          `set fanInFanOut to ${this.fanInFanOut} (getPeftModel corrects it with PEFT's warning)`,
      );
    }
  }

  /** A, then B, drawn with PyTorch's default Linear initialisation: after the same `manualSeed`, A equals PEFT's. */
  protected createAdapterWeights(name: string, s: AdapterSettings): void {
    this.loraA.set(name, new Linear(this.inFeatures, s.r, { bias: false }));
    this.loraB.set(name, new Linear(s.r, this.outFeatures, { bias: s.loraBias }));
    this.loraDropout.set(name, loraDropoutModule(s.loraDropout));
  }

  protected removeAdapterWeights(name: string): void {
    if (this.loraA.has(name)) this.loraA.delete(name)?.dispose();
    if (this.loraB.has(name)) this.loraB.delete(name)?.dispose();
    if (this.loraDropout.has(name)) this.loraDropout.delete(name);
  }

  dropout(name: string): Module {
    return this.loraDropout.get(name);
  }

  /** B(A(x)), unscaled. */
  lowRankForward(name: string, x: tf.Tensor): tf.Tensor {
    return this.loraB.get(name).call(this.loraA.get(name).call(x)) as tf.Tensor;
  }

  /**
   * On webgpu (fused kernels): B's product, the scale and the add into the base output in one
   * dispatch. Not where lora_B has a bias or hooks (calling it is what runs them).
   */
  protected override addScaledLowRank(name: string, x: tf.Tensor, result: tf.Tensor, scale: number): tf.Tensor | null {
    const b = this.loraB.get(name);
    if (!fusedLoraActive() || b.bias || b.hasForwardHooks || result.shape.at(-1) !== b.outFeatures) return null;
    // decided before lora_A runs, so that declining never runs it (and its hooks) a second time
    if (x.shape.slice(0, -1).join(',') !== result.shape.slice(0, -1).join(',')) return null;
    const h = this.loraA.get(name).call(x) as tf.Tensor;
    // a hook on lora_A may reshape its output: then B's product the composite way, from this h
    if (h.shape.slice(0, -1).join(',') !== result.shape.slice(0, -1).join(','))
      return tf.add(result, tf.mul(b.call(h) as tf.Tensor, scale));
    return addLowRank(result, h, b.weight, scale);
  }

  /**
   * On webgpu (fused kernels), one active plain adapter: the base product and `s·B(A(x))` in one
   * dispatch where the tiled matmul takes the product (`linearLowRank`; a base bias is one add more).
   * Not for a `[in, out]` base, a base with hooks, lora_B with a bias or hooks, or a variant (DoRA, Arrow).
   */
  protected override fusedForward(x: tf.Tensor): tf.Tensor | null {
    if (this.activeAdapters.length !== 1 || !fusedLoraActive()) return null;
    const name = this.activeAdapters[0] as string;
    const base = this.baseLayer;
    const b = this.settings.has(name) && this.loraB.has(name) ? this.loraB.get(name) : null;
    // a Linear exactly (a subclass may compute its forward otherwise, e.g. from quantized weights)
    const plain = base instanceof Linear && Object.getPrototypeOf(base) === Linear.prototype;
    if (!b || this.variantOf(name) || !plain || base.hasForwardHooks) return null;
    if (b.bias || b.hasForwardHooks || x.shape.at(-1) !== base.inFeatures) return null;
    const h = this.loraA.get(name).call(this.dropout(name).call(x) as tf.Tensor) as tf.Tensor;
    const y = linearLowRank(x, base.weight, h, b.weight, this.scaling.get(name) as number);
    // the base's bias after the low-rank term: PEFT adds it inside base(x), a float32 rounding apart
    return base.bias ? tf.add(y, base.bias) : y;
  }

  /**
   * ΔW = s·B·A in the base weight's layout (transposed for fan_in_fan_out), PEFT's `get_delta_weight`.
   * The caller owns the tensor.
   */
  getDeltaWeight(name: string): tf.Tensor2D {
    const s = this.settings.get(name);
    if (!s) throw new Error(`adapter '${name}' is not on this layer; it has ${[...this.settings.keys()].join(', ')}`);
    return tf.tidy(() => {
      const ba = tf.mul(
        tf.matMul(this.loraB.get(name).weight, this.loraA.get(name).weight),
        this.scaling.get(name) as number,
      );
      return (s.fanInFanOut ? tf.transpose(ba) : ba) as tf.Tensor2D;
    });
  }

  /** A of an adapter ([r, in]). */
  factorA(name: string): tf.Variable {
    return this.loraA.get(name).weight;
  }

  /** B of an adapter ([out, r]). */
  factorB(name: string): tf.Variable {
    return this.loraB.get(name).weight;
  }

  protected ownTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {
      [PEFT_SUFFIX.loraA]: this.loraA.get(name).weight,
      [PEFT_SUFFIX.loraB]: this.loraB.get(name).weight,
    };
    const bias = this.loraB.get(name).bias;
    if (bias) out[PEFT_SUFFIX.loraBBias] = bias;
    return out;
  }

  override loraBias(name: string): tf.Variable | null {
    return this.loraB.get(name).bias;
  }
}
