import * as tf from '@tensorflow/tfjs-core';
import { type AdapterSettings, type LoraConfig, type LoraDispatcher, LoraConfigError, LoraLinear } from '@lora/core';
import { QuantizedLinear } from './quantized-linear';

/** Initialisations that read or rewrite the base weight, which a quantized base keeps packed. */
const BASE_WRITING_INITS = /^(pissa(_niter_\d+)?|olora|loftq|lora_ga|corda.*)$/;

let warnedMerge = false;

async function allFinite(tensors: tf.Tensor[]): Promise<boolean> {
  const ok = tf.tidy(() => tf.all(tf.stack(tensors.map((t) => tf.all(tf.isFinite(t))))));
  const v = (await ok.data())[0];
  ok.dispose();
  return v === 1;
}

/**
 * LoRA over a {@link QuantizedLinear} (PEFT's `lora.bnb.Linear4bit` / `Linear8bitLt`): A, B, dropout and
 * the forward as `LoraLinear` (the base decodes its weight inside its own forward); merging decodes the
 * base weight, adds ΔW and stores the result quantized again (or in float32, per the layer's
 * `requantizeOnMerge`), as PEFT's bitsandbytes layers do; unmerging decodes, subtracts and stores again.
 * DoRA and initialisations that rewrite the base weight (`'pissa'`, `'olora'`, `'loftq'`, `'lora_ga'`)
 * are refused here: initialise on the full-precision model, then quantize it (or use
 * {@link replaceLoraWeightsLoftq} for LoftQ on a quantized base). Made by the dispatcher `@lora/loftq`
 * registers; rarely built directly.
 *
 * @example
 * ```ts
 * quantizeModel(model, { bits: 4 });
 * const peft = getPeftModel(model, { r: 16, targetModules: ['q_proj', 'v_proj'] }); // LoraQuantizedLinear layers
 * ```
 */
export class LoraQuantizedLinear extends LoraLinear {
  declare baseLayer: QuantizedLinear;

  constructor(base: QuantizedLinear, adapterName: string, settings: AdapterSettings, config?: LoraConfig) {
    super(base, adapterName, settings, config);
  }

  protected override checkSettings(name: string, s: AdapterSettings): void {
    super.checkSettings(name, s);
    const where = `${s.path ? `'${s.path}'` : 'this layer'} (QuantizedLinear, ${this.baseLayer.format})`;
    if (s.useDora)
      throw new LoraConfigError(
        `DoRA over a quantized base is not supported here (${where}): its magnitude needs the weight's norms; use DoRA on the full-precision model, or plain LoRA over the quantized one`,
        { field: 'use_dora' },
      );
    const init = s.initLoraWeights;
    if (typeof init === 'string' && BASE_WRITING_INITS.test(init))
      throw new LoraConfigError(
        `init_lora_weights='${init}' rewrites the base weight, which ${where} keeps quantized: initialise on the full-precision model and quantize afterwards (for LoftQ: init_lora_weights 'loftq' there, or replaceLoraWeightsLoftq on the quantized model)`,
        { field: 'init_lora_weights' },
      );
  }

  override unmergedBaseWeight(): tf.Tensor {
    return tf.tidy(() =>
      this.mergedAdapters.reduceRight(
        (acc, merged) => this.unmergedWeight(merged, acc),
        this.baseLayer.dequantize() as tf.Tensor,
      ),
    );
  }

  /** The merged weight and bias for one adapter, before anything is written. */
  private mergedTensors(name: string, safe: boolean): tf.Tensor[] {
    const loraBias = this.loraBias(name);
    const bias = this.baseLayer.bias;
    if (loraBias && !bias)
      throw new Error('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.');
    const weight = tf.tidy(() => this.mergedWeight(name, this.baseLayer.dequantize(), safe));
    if (!loraBias || !bias) return [weight];
    return [weight, tf.tidy(() => tf.add(bias, tf.mul(loraBias, this.scaling.get(name) as number)))];
  }

  private storeMerged(name: string, [weight, bias]: tf.Tensor[]): void {
    if (!warnedMerge && this.baseLayer.requantizeOnMerge) {
      warnedMerge = true;
      console.warn(
        'Merge lora module to a quantized linear may get different generations due to rounding errors (the merged weight is quantized again).',
      );
    }
    this.baseLayer.setWeight(weight as tf.Tensor2D);
    weight?.dispose();
    if (bias) {
      this.baseLayer.bias?.assign(bias);
      bias.dispose();
    }
    this.mergedAdapters.push(name);
  }

  override merge(options?: { adapterNames?: string[]; safeMerge?: false }): void;
  override merge(options: { adapterNames?: string[]; safeMerge: true }): Promise<void>;
  override merge(options: { adapterNames?: string[]; safeMerge?: boolean }): void | Promise<void>;
  override merge(options: { adapterNames?: string[]; safeMerge?: boolean } = {}): void | Promise<void> {
    const names = (options.adapterNames ?? this.activeAdapters).filter(
      (n) => this.settings.has(n) && !this.mergedAdapters.includes(n),
    );
    if (!options.safeMerge) {
      for (const name of names) this.storeMerged(name, this.mergedTensors(name, false));
      return;
    }
    return (async () => {
      for (const name of names) {
        const next = this.mergedTensors(name, true);
        if (!(await allFinite(next))) {
          tf.dispose(next);
          throw new Error(`NaNs detected in the merged weights. The adapter ${name} seems to be broken`);
        }
        this.storeMerged(name, next);
      }
    })();
  }

  override unmerge(): void {
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop() as string;
      const w = tf.tidy(() => this.unmergedWeight(name, this.baseLayer.dequantize())) as tf.Tensor2D;
      this.baseLayer.setWeight(w);
      w.dispose();
      const loraBias = this.loraBias(name);
      const bias = this.baseLayer.bias;
      if (loraBias && bias)
        tf.tidy(() => bias.assign(tf.sub(bias, tf.mul(loraBias, this.scaling.get(name) as number))));
    }
  }
}

/**
 * The dispatcher `@lora/loftq` registers (PEFT's `dispatch_bnb_4bit` / `dispatch_bnb_8bit`): a
 * {@link QuantizedLinear} target becomes a {@link LoraQuantizedLinear}; fan_in_fan_out is corrected to
 * false with PEFT's warning (the quantized weight is `[out, in]`).
 */
export const dispatchQuantizedLinear: LoraDispatcher = ({ target, adapterName, settings, config }) => {
  if (!(target instanceof QuantizedLinear)) return null;
  if (settings.fanInFanOut)
    console.warn(
      'fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False.',
    );
  return new LoraQuantizedLinear(target, adapterName, { ...settings, fanInFanOut: false }, config);
};
