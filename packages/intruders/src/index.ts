export { IntruderReductionError } from './errors';
export type { IntruderSettings } from './options';
export { reduceIntruderDimension } from './reduce-intruder-dimension';
export type { IntruderReport, ReduceIntruderDimensionOptions } from './reduce-intruder-dimension';
export { reduceIntruderTensors } from './reduce-intruder-tensors';
export type { RawWeight, ReduceIntruderTensorsOptions, ReducedTensors } from './reduce-intruder-tensors';
export type { IntruderLayerReport } from './reduce-layer';
export { WeightSvdCache } from './weight-svd-cache';
export type { WeightSvd } from './weight-svd-cache';
