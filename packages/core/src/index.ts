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
export type { InitLoraWeights, LoraConfig, LoraConfigFromJsonOptions } from './lora-config';
export { TargetModuleError, matchModule, resolveTargetPaths, resolveTargets } from './targets';
export type { ResolvedTargets } from './targets';
export { LoraConv } from './layers/lora-conv';
export { LoraEmbedding } from './layers/lora-embedding';
export { LoraLinear } from './layers/lora-linear';
export type { AdapterSettings } from './layers/lora-linear';
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
export {
  PREFIX as PEFT_KEY_PREFIX,
  adapterTargets,
  mergeAdapterWeights,
  mergedModulePaths,
} from './files/merge-weights';
export type { AdapterFiles, AdapterTargetKind, MergeWeightsOptions, MergedWeights } from './files/merge-weights';
export { lookupLoraInit, registerLoraInit } from './inits/init-registry';
export type { LoraInitContext, LoraInitializer } from './inits/init-registry';
export { ModulesToSaveWrapper } from './layers/modules-to-save';
export { TrainableTokensLayer, TrainableTokensWrapper } from './layers/trainable-tokens';
export { inputEmbeddingsPath, outputEmbeddingsPath } from './model-embeddings';
export type { ModelWithEmbeddings } from './model-embeddings';
export type { SaveEmbeddingLayers } from './files/embedding-layers';
export { convertToLoraTensors, convertedLoraConfig } from './files/weight-conversion';
export type { InitialAdapter } from './files/weight-conversion';
