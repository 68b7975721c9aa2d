import './register';

export { QuantizationError } from './errors';
export { NF4_CODE, NF4_THRESHOLDS, normalFloatCodebook, normalQuantile } from './codebooks';
export { nf4Dequantize, nf4Quantize } from './nf4';
export type { Nf4Quantized } from './nf4';
export { nfDequantize, nfQuantize } from './normal-float';
export type { NfQuantized } from './normal-float';
export { int8Dequantize, int8Quantize } from './int8';
export type { Int8Quantized } from './int8';
export type { WeightInput } from './weight-input';
export { loftqInit } from './loftq-init';
export type { LoftqBits, LoftqInitOptions, LoftqInitResult, LoftqSvd } from './loftq-init';
export { QuantizedLinear } from './quantized-linear';
export type { QuantizedLinearOptions } from './quantized-linear';
export type { QuantizedFormat } from './packed-weight';
export { LoraQuantizedLinear, dispatchQuantizedLinear } from './lora-quantized-linear';
export { dequantizeModel, modelBytes, quantizeModel } from './quantize-model';
export type { QuantizeModelOptions, QuantizeModelResult } from './quantize-model';
