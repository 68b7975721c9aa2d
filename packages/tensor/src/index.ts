export { autoOrder, describeAdapter, getBackendInfo, initBackend, listBackends } from './backend';
export type { AutoFacts } from './backend';
export type {
  BackendAvailability,
  BackendInfo,
  BackendName,
  InitBackendOptions,
  OptionalPackage,
  WebGPUOptions,
} from './backend';
export {
  BackendUnavailableError,
  FileAccessError,
  HubError,
  SafetensorsError,
  TensorLeakError,
  WasmOutOfMemoryError,
  describeValue,
} from './errors';
export type { HubErrorCode, SafetensorsErrorDetail } from './errors';
export { bf16ToFloat32, f16BitsToNumber, f16ToFloat32, float32ToBf16, float32ToF16, numberToF16Bits } from './half';
export { assertNoLeaks, countTensors } from './memory';
export { memoryUsage } from './wasm-memory';
export type { MemoryUsage } from './wasm-memory';
export { Generator } from './random';
export type { GeneratorState } from './random';
export {
  MAX_HEADER_BYTES,
  MAX_HEADER_DEPTH,
  MAX_TENSORS,
  READABLE_DTYPES,
  SAFETENSORS_DTYPE_SIZES,
  readSafetensorsHeader,
} from './safetensors-format';
export type { SafetensorsDtype, SafetensorsEntry, SafetensorsHeader } from './safetensors-format';
export { decodeEntry, parseSafetensors } from './safetensors-reader';
export type { DecodedTensor, ParsedSafetensors } from './safetensors-reader';
export { encodeValues, serializeSafetensors } from './safetensors-writer';
export type { RawTensor, SerializeOptions, WritableDtype } from './safetensors-writer';
export { byteSourceOf } from './byte-source';
export type { ByteSource } from './byte-source';
export { readSafetensorsHeaderFrom, streamSafetensors } from './safetensors-stream';
export type { StreamedTensor } from './safetensors-stream';
export { isHubRepoId } from './hub-options';
export type { DownloadProgress, HubOptions } from './hub-options';
export { openFiles } from './file-source';
export type { FileContent, FileSource, ModelFiles } from './file-source';
export { maxRelativeError } from './parity';
export type { WebGPUBackendLike, WebGPUProgramLike, WebGPUUniform } from './webgpu-program';
export { dispatchCacheStats, ensureDispatchCache, setDispatchCache } from './webgpu-dispatch-cache';
