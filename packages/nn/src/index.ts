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
export { matmul, matmulTransposeB, transposeLast } from './ops';
export { Conv1d, Conv2d, conv } from './conv';
export { TransposedLinear, transposedLinear } from './transposed-linear';
export type { ConvOptions } from './conv';
export { ModuleDict, ModuleList, ParameterDict, Sequential } from './containers';
export { AdamW, SGD, clipGradNorm } from './optim';
export type { AdamWOptions, Optimizer, SGDOptions } from './optim';
export { crossEntropy } from './loss';
export { constantWarmupSchedule, cosineWarmupSchedule, linearWarmupSchedule } from './schedule';
export type { Schedule } from './schedule';
export { checkpointCallback, gradientsFor, train } from './train';
export type { BatchSource, TrainCallbacks, TrainLogs, TrainOptions, TrainResult } from './train';
