export { readCheckpoint } from './files';
export { parseLlamaConfig } from './llama-config';
export type { LlamaConfig, RopeParameters } from './llama-config';
export { KVCache, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel } from './llama';
export type { CausalLMOptions, GenerateOptions } from './llama';
export { llamaKernels } from './llama-kernels';
export type { LlamaKernels } from './llama-kernels';
export { applyRope, ropeInverseFrequencies, ropeTables } from './rope';
export { Tokenizer, loadTokenizer } from './tokenizer';
