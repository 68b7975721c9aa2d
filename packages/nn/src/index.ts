export { Module, makeParameter } from './module';
export type { ForwardHook, ForwardPreHook, LoadStateDictResult, Parameter, RemovableHandle } from './module';
export {
  defaultRng,
  initSkipped,
  kaimingUniformDefault,
  manualSeed,
  normalInit,
  uniformInit,
  withoutInit,
} from './init';
export { Dropout, Embedding, GELU, LayerNorm, Linear, RMSNorm, SiLU, embedding, gelu, linear } from './layers';
export { matmul, matmulTransposeB, needsGrad, transposeLast } from './ops';
export { gradientsOf, isRecordingGradients, variableGrads } from './grad';
export { checkpoint } from './checkpoint';
export type { CheckpointOptions } from './checkpoint';
export { scaledDotProductAttention } from './attention';
export type { AttentionOptions } from './attention';
export { gpuKernelsActive, rmsNorm, rope, swiglu } from './fused';
export { Conv1d, Conv2d, conv } from './conv';
export { TransposedLinear, transposedLinear } from './transposed-linear';
export type { ConvOptions } from './conv';
export { ModuleDict, ModuleList, ParameterDict, Sequential } from './containers';
export { AdamW, SGD, clipGradNorm } from './optim';
export type { AdamWOptions, Optimizer, SGDOptions } from './optim';
export { crossEntropy, linearCrossEntropy, transposedVocabBlocks } from './loss';
export type { LinearCrossEntropyOptions } from './loss';
export { constantWarmupSchedule, cosineWarmupSchedule, linearWarmupSchedule } from './schedule';
export type { Schedule } from './schedule';
export { checkpointCallback, gradientsFor, train } from './train';
export type { BatchSource, TrainCallbacks, TrainLogs, TrainOptions, TrainResult } from './train';
export { HalfEmbedding, HalfLinear, isStoredWeightLayer, storedWeightRefusal } from './half-layers';
export type { HalfStorageOptions, StoredWeightLayer } from './half-layers';
export {
  decodeHalfWords,
  defaultHalfPacking,
  encodeHalf,
  halfRowWords,
  halfTable,
  packHalfCodes,
  roundToHalf,
} from './half-weight';
export type { HalfFormat, HalfPacking } from './half-weight';
