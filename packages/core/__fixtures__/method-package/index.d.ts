import type { AdapterSettings, LoraConfig, LoraLayerBase, LoraVariant } from '@lora/core';
import type { Module } from '@lora/nn';
import type * as tf from '@tensorflow/tfjs-core';

export declare const initialised: { path: string; kind: string; gate: number | null }[];
export declare const gatedVariant: LoraVariant;
export declare class FrozenLinear extends Module {
  weight: tf.Variable;
  bias: null;
  constructor(inFeatures: number, outFeatures: number);
  forward(x: tf.Tensor): tf.Tensor;
}
export declare class LoraFrozenLinear extends LoraLayerBase<FrozenLinear> {
  readonly kind: 'linear';
  baseLayer: FrozenLinear;
  constructor(base: FrozenLinear, adapterName: string, settings: AdapterSettings, config?: LoraConfig);
  protected checkSettings(name: string, settings: AdapterSettings): void;
  protected createAdapterWeights(name: string, settings: AdapterSettings): void;
  protected removeAdapterWeights(name: string): void;
  protected ownTensors(name: string): Record<string, tf.Variable>;
  getDeltaWeight(name: string): tf.Tensor;
  factorA(name: string): tf.Variable;
  factorB(name: string): tf.Variable;
  lowRankForward(name: string, x: tf.Tensor): tf.Tensor;
  dropout(name: string): Module;
}
