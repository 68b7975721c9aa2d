export { planCheckpoint, readCheckpoint } from './files';
export type { CheckpointEntry, CheckpointPlan } from './files';
export { parseLlamaConfig } from './llama-config';
export type { LlamaConfig, RopeParameters } from './llama-config';
export { KVCache, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel } from './llama';
export type { GenerateOptions } from './llama';
export { applyRope, ropeInverseFrequencies, ropeTables } from './rope';
export { Tokenizer, loadTokenizer } from './tokenizer';
