/** RoPE settings, as transformers' `rope_parameters` (or the older `rope_theta` + `rope_scaling`). */
export interface RopeParameters {
  ropeType: 'default' | 'linear' | 'llama3';
  ropeTheta: number;
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
}

/** A Llama-family configuration (camelCase of Hugging Face's `config.json`). */
export interface LlamaConfig {
  modelType: 'llama' | 'qwen2';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  rope: RopeParameters;
  tieWordEmbeddings: boolean;
  /** Bias on q/k/v (and on o for Llama; Qwen2 has none there). */
  attentionBias: boolean;
  mlpBias: boolean;
  hiddenAct: 'silu';
  initializerRange: number;
  bosTokenId: number | null;
  eosTokenId: number[];
  padTokenId: number | null;
}

function need(raw: Record<string, unknown>, key: string): number {
  const v = raw[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw new Error(`config.json: '${key}' must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Reads a Hugging Face `config.json` for the Llama family (`model_type` llama — Llama 2/3, SmolLM,
 * TinyLlama — or qwen2). Unsupported settings fail with the setting named.
 *
 * @example
 * ```ts
 * const config = parseLlamaConfig(JSON.parse(await readFile('SmolLM-135M/config.json', 'utf8')));
 * ```
 */
export function parseLlamaConfig(raw: Record<string, unknown>): LlamaConfig {
  const modelType = raw.model_type;
  if (modelType !== 'llama' && modelType !== 'qwen2') {
    throw new Error(
      `config.json: model_type '${String(modelType)}' is not supported; LlamaForCausalLM covers 'llama' (Llama 2/3, SmolLM, TinyLlama) and 'qwen2'`,
    );
  }
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') throw new Error(`config.json: hidden_act '${String(act)}' is not supported (only 'silu')`);
  if (modelType === 'qwen2' && raw.use_sliding_window === true)
    throw new Error('config.json: use_sliding_window is not supported; set it to false');
  const heads = need(raw, 'num_attention_heads');
  const hidden = need(raw, 'hidden_size');
  const kvHeads = typeof raw.num_key_value_heads === 'number' ? raw.num_key_value_heads : heads;
  if (heads % kvHeads !== 0)
    throw new Error(
      `config.json: num_attention_heads (${heads}) must be a multiple of num_key_value_heads (${kvHeads})`,
    );
  const headDim = typeof raw.head_dim === 'number' ? raw.head_dim : hidden / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0)
    throw new Error(`config.json: head_dim ${headDim} must be an even integer`);
  // transformers 5 writes rope_parameters; older files have rope_theta and rope_scaling.
  const params = (raw.rope_parameters ?? raw.rope_scaling ?? {}) as Record<string, unknown>;
  const ropeType = String(params.rope_type ?? params.type ?? 'default');
  if (ropeType !== 'default' && ropeType !== 'linear' && ropeType !== 'llama3') {
    throw new Error(`config.json: rope_type '${ropeType}' is not supported (default, linear and llama3 are)`);
  }
  const rope: RopeParameters = { ropeType, ropeTheta: Number(params.rope_theta ?? raw.rope_theta ?? 10000) };
  if (ropeType !== 'default') rope.factor = Number(params.factor);
  if (ropeType === 'llama3') {
    rope.lowFreqFactor = Number(params.low_freq_factor);
    rope.highFreqFactor = Number(params.high_freq_factor);
    rope.originalMaxPositionEmbeddings = Number(params.original_max_position_embeddings);
    for (const [k, v] of Object.entries(rope))
      if (typeof v === 'number' && !Number.isFinite(v))
        throw new Error(`config.json: llama3 rope parameter ${k} is missing`);
  }
  const eos = raw.eos_token_id;
  return {
    modelType,
    vocabSize: need(raw, 'vocab_size'),
    hiddenSize: hidden,
    intermediateSize: need(raw, 'intermediate_size'),
    numHiddenLayers: need(raw, 'num_hidden_layers'),
    numAttentionHeads: heads,
    numKeyValueHeads: kvHeads,
    headDim,
    maxPositionEmbeddings: typeof raw.max_position_embeddings === 'number' ? raw.max_position_embeddings : 2048,
    rmsNormEps: typeof raw.rms_norm_eps === 'number' ? raw.rms_norm_eps : 1e-6,
    rope,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    attentionBias: modelType === 'qwen2' ? true : raw.attention_bias === true,
    mlpBias: raw.mlp_bias === true,
    hiddenAct: 'silu',
    initializerRange: typeof raw.initializer_range === 'number' ? raw.initializer_range : 0.02,
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : null,
    eosTokenId: typeof eos === 'number' ? [eos] : Array.isArray(eos) ? (eos as number[]) : [],
    padTokenId: typeof raw.pad_token_id === 'number' ? raw.pad_token_id : null,
  };
}
