import './register';

export { getEvaStateDict } from './eva-state-dict';
export type { EvaReport, EvaStateDict, GetEvaStateDictOptions } from './eva-state-dict';
export { initializeLoraEvaWeights } from './initialize';
export type { EvaInitResult, InitializeLoraEvaWeightsOptions } from './initialize';
export {
  forwardFnDefault,
  prepareLayerInputsFnFlatten,
  prepareLayerInputsFnLanguageModeling,
  prepareModelInputsFnLanguageModeling,
} from './prepare';
export type { EvaBatch, ForwardFn, PrepareLayerInputsFn, PrepareModelInputsFn } from './prepare';
export { evaProgressBar } from './progress';
export type { EvaProgress } from './progress';
export { EvaError } from './errors';
export type { EvaErrorCode } from './errors';
export type { IpcaPrecision } from './incremental-pca';
export { rankDistribution, roundHalfEven, torchArgsortDescending } from './rank-distribution';
export type { RankDistributionInput } from './rank-distribution';
export { findMinimalTargetModules } from './minimal-targets';
export { evaInit } from './register';
