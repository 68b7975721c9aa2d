import './register';

export { preprocessLoraga } from './preprocess-loraga';
export type { PreprocessLoragaOptions } from './preprocess-loraga';
export { estimateGradients } from './estimate-gradients';
export type { EstimateGradientsOptions, LoraGaBackward, LoraGaTrainStep } from './estimate-gradients';
export { hasLoraGaGradient, releaseLoraGaGradients } from './gradient-store';
export { loraGaTargets } from './targets';
export type { LoraGaTarget } from './targets';
export { loraGaInit } from './lora-ga-init';
export { LoraGaCacheError } from './errors';
export type { LoraGaCacheField } from './errors';
