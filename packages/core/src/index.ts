export {
  LoraConfigError,
  loraConfig,
  loraConfigFromJson,
  loraConfigToJson,
  loraScaling,
  moduleScaling,
  patternKey,
} from './lora-config';
export type { InitLoraWeights, LoraConfig } from './lora-config';
export { TargetModuleError, matchModule, resolveTargets } from './targets';
export type { ResolvedTargets } from './targets';
export { LoraConv } from './lora-conv';
export { LoraEmbedding } from './lora-embedding';
export { LoraLinear } from './lora-linear';
export type { AdapterSettings } from './lora-linear';
export { LoraModel, PeftModel, getPeftModel } from './peft-model';
export type { LoraLayer } from './peft-model';
export { adapterStateDict, loadAdapter, saveAdapter, serializeAdapter } from './adapter-io';
export type { LoadAdapterResult, SaveAdapterOptions, SerializeAdapterOptions } from './adapter-io';
export { addWeightedAdapter } from './weighted-adapter';
export { COMBINATION_TYPES } from './adapter-combination';
export type { CombinationType, WeightedAdapterOptions } from './adapter-combination';
export { combineAdapters } from './combine-adapters';
export type { CombineAdaptersOptions } from './combine-adapters';
export { PREFIX as PEFT_KEY_PREFIX, adapterTargets, mergeAdapterWeights, mergedModulePaths } from './merge-weights';
export type { AdapterFiles, AdapterTargetKind, MergeWeightsOptions, MergedWeights } from './merge-weights';
export { lookupLoraInit, registerLoraInit } from './init-registry';
export type { LoraInitContext, LoraInitializer } from './init-registry';
export { ModulesToSaveWrapper } from './modules-to-save';
export { TrainableTokensLayer, TrainableTokensWrapper } from './trainable-tokens';
export { inputEmbeddingsPath, outputEmbeddingsPath } from './model-embeddings';
export type { ModelWithEmbeddings } from './model-embeddings';
export type { SaveEmbeddingLayers } from './embedding-layers';
export { convertToLoraTensors, convertedLoraConfig } from './weight-conversion';
export type { InitialAdapter } from './weight-conversion';
