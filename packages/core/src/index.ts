export { AdapterFileError, LoraConfigError } from './errors';
export type { LoraConfigErrorDetail } from './errors';
export {
  MAX_PISSA_NITER,
  checkLoraConfig,
  loraConfig,
  loraConfigFromJson,
  loraConfigToJson,
  loraScaling,
  moduleScaling,
  patternKey,
} from './lora-config';
export type { InitLoraWeights, LoraConfig, LoraConfigFields, LoraConfigFromJsonOptions } from './lora-config';
export { arrowConfig, evaConfig, loftqConfig, loraGaConfig } from './method-configs';
export type { ArrowConfig, EvaConfig, LoftQConfig, LoraGaConfig } from './method-configs';
export { TargetModuleError, matchModule, resolveTargetPaths, resolveTargets } from './targets';
export type { ResolvedTargets } from './targets';
export { LoraConv } from './layers/lora-conv';
export { LoraEmbedding } from './layers/lora-embedding';
export { LoraLinear } from './layers/lora-linear';
export type { AdapterSettings } from './layers/adapter-settings';
export { Identity, LoraLayerBase, isTunerLayer, loraDropoutModule } from './layers/lora-layer';
export type { BaseWithWeight, LoraLayerKind, TunerLayer } from './layers/tuner-layer';
export { getDeltaWeight } from './layers/delta-weight';
export { dispatchLoraLayer, registerLoraDispatcher } from './layers/dispatch';
export type { LoraDispatchContext, LoraDispatcher } from './layers/dispatch';
export { DEFAULT_TARGET_MODULES, LoraModel, PeftModel, getPeftModel } from './peft-model';
export type { LoraLayer } from './peft-model';
export { adapterStateDict, loadAdapter, saveAdapter, serializeAdapter } from './files/adapter-io';
export type {
  LoadAdapterOptions,
  LoadAdapterResult,
  SaveAdapterOptions,
  SerializeAdapterOptions,
} from './files/adapter-io';
export { addWeightedAdapter } from './combination/weighted-adapter';
export { COMBINATION_TYPES } from './combination/adapter-combination';
export type { CombinationType, WeightedAdapterOptions } from './combination/adapter-combination';
export { combineAdapters } from './files/combine-adapters';
export type { CombineAdaptersOptions } from './files/combine-adapters';
export { mergeAdapterWeights } from './files/merge-weights';
export {
  LORA_MODULE_SUFFIXES,
  PEFT_KEY_PREFIX,
  PEFT_SUFFIX,
  adapterTargets,
  loraFactorKeys,
  loraModuleOfKey,
  mergedModulePaths,
  moduleTensors,
  peftKey,
  replacedBaseWeights,
  tokenTargets,
} from './files/peft-keys';
export type { AdapterTargetKind } from './files/peft-keys';
export type { AdapterFiles, MergeWeightsOptions, MergedWeights } from './files/merge-weights';
export { lookupLoraInit, registerLoraInit } from './inits/init-registry';
export type { LoraInitContext, LoraInitOptions, LoraInitializer } from './inits/init-registry';
export { resetLoraParameters } from './inits/default-init';
export { lookupLoraVariant, registerLoraVariant } from './variants/variant-registry';
export type { LoraVariant, LoraVariantRequest } from './variants/variant-registry';
export { Magnitude, doraVariant } from './variants/dora';
export { ModulesToSaveWrapper } from './layers/modules-to-save';
export { TrainableTokensLayer, TrainableTokensWrapper } from './layers/trainable-tokens';
export { inputEmbeddingsPath, outputEmbeddingsPath } from './model-embeddings';
export type { ModelWithEmbeddings } from './model-embeddings';
export type { SaveEmbeddingLayers } from './files/embedding-layers';
export { convertToLoraTensors, convertedLoraConfig } from './files/weight-conversion';
export type { InitialAdapter } from './files/weight-conversion';
