import * as tf from '@tensorflow/tfjs-core';
import { Generator, type HubOptions, type ModelFiles, openFiles } from '@lora/tensor';
import {
  Embedding,
  Linear,
  Module,
  ModuleList,
  RMSNorm,
  crossEntropy,
  matmul,
  matmulTransposeB,
  normalInit,
  withoutInit,
} from '@lora/nn';
import { maskedSoftmax, ropeHeads, swiglu } from '@lora/kernels';
import { planCheckpoint } from './files';
import { type LlamaConfig, parseLlamaConfig } from './llama-config';
import { ropeInverseFrequencies, ropeTables } from './rope';

/** Keys and values of earlier positions, per layer, for incremental decoding. */
export class KVCache {
  layers: { k: tf.Tensor4D; v: tf.Tensor4D }[] = [];
  /** Positions held. */
  get length(): number {
    return this.layers[0]?.k.shape[2] ?? 0;
  }
  dispose(): void {
    for (const l of this.layers) tf.dispose([l.k, l.v]);
    this.layers = [];
  }
}

interface AttentionContext {
  cos: tf.Tensor;
  sin: tf.Tensor;
  /** Additive mask [B, 1, rep·T, S] (rep = query heads per kv head): 0 where a query may attend, the float32 minimum elsewhere. */
  mask: tf.Tensor;
  cache: KVCache | null;
  layerIdx: number;
}

/** Multi-head attention with grouped-query heads and RoPE (Hugging Face's `LlamaAttention`). */
export class LlamaAttention extends Module {
  readonly config: LlamaConfig;
  qProj: Linear;
  kProj: Linear;
  vProj: Linear;
  oProj: Linear;

  constructor(config: LlamaConfig) {
    super();
    this.config = config;
    const { hiddenSize: h, numAttentionHeads: nh, numKeyValueHeads: nkv, headDim: d, attentionBias } = config;
    this.qProj = this.registerModule('q_proj', new Linear(h, nh * d, { bias: attentionBias }));
    this.kProj = this.registerModule('k_proj', new Linear(h, nkv * d, { bias: attentionBias }));
    this.vProj = this.registerModule('v_proj', new Linear(h, nkv * d, { bias: attentionBias }));
    // Qwen2 puts a bias on q, k and v only
    this.oProj = this.registerModule(
      'o_proj',
      new Linear(nh * d, h, { bias: attentionBias && config.modelType === 'llama' }),
    );
  }

  forward(x: tf.Tensor, ctx: AttentionContext): tf.Tensor {
    const [b, t] = x.shape as [number, number, number];
    const { numAttentionHeads: nh, numKeyValueHeads: nkv, headDim: d } = this.config;
    const rep = nh / nkv;
    // [B, T, n·d] → heads [B, n, T, d], rotated for q and k (@lora/kernels: one dispatch on webgpu)
    const q = ropeHeads(this.qProj.call(x), ctx.cos, ctx.sin, nh);
    let k = ropeHeads(this.kProj.call(x), ctx.cos, ctx.sin, nkv) as tf.Tensor4D;
    let v = ropeHeads(this.vProj.call(x), null, null, nkv) as tf.Tensor4D;
    if (ctx.cache) {
      const past = ctx.cache.layers[ctx.layerIdx];
      if (past) {
        k = tf.concat([past.k, k], 2);
        v = tf.concat([past.v, v], 2);
      }
      ctx.cache.layers[ctx.layerIdx] = { k: tf.keep(k), v: tf.keep(v) };
      if (past) tf.dispose([past.k, past.v]);
    }
    // Grouped-query attention without repeating k and v: the `rep` query heads that share a kv head
    // are stacked along the query axis ([B, nkv, rep·T, d]), which keeps every tensor 4-d.
    const qg = tf.reshape(q, [b, nkv, rep * t, d]);
    // q·kᵀ (an explicit transpose on wasm, where matMul's flags are slow; the flag on webgpu), then
    // softmax(scores/√d + mask), the mask built already repeated for the grouped query rows
    const probs = maskedSoftmax(matmulTransposeB(qg, k), ctx.mask, 1 / Math.sqrt(d));
    const out = tf.reshape(matmul(probs, v), [b, nh, t, d]);
    const merged = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, t, nh * d]);
    return this.oProj.call(merged);
  }
}

/** SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`. */
export class LlamaMLP extends Module {
  gateProj: Linear;
  upProj: Linear;
  downProj: Linear;

  constructor(config: LlamaConfig) {
    super();
    const bias = config.mlpBias;
    this.gateProj = this.registerModule('gate_proj', new Linear(config.hiddenSize, config.intermediateSize, { bias }));
    this.upProj = this.registerModule('up_proj', new Linear(config.hiddenSize, config.intermediateSize, { bias }));
    this.downProj = this.registerModule('down_proj', new Linear(config.intermediateSize, config.hiddenSize, { bias }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return this.downProj.call(swiglu(this.gateProj.call(x), this.upProj.call(x)));
  }
}

/** One pre-norm transformer block. */
export class LlamaDecoderLayer extends Module {
  selfAttn: LlamaAttention;
  mlp: LlamaMLP;
  inputLayernorm: RMSNorm;
  postAttentionLayernorm: RMSNorm;

  constructor(config: LlamaConfig) {
    super();
    this.selfAttn = this.registerModule('self_attn', new LlamaAttention(config));
    this.mlp = this.registerModule('mlp', new LlamaMLP(config));
    this.inputLayernorm = this.registerModule(
      'input_layernorm',
      new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps }),
    );
    this.postAttentionLayernorm = this.registerModule(
      'post_attention_layernorm',
      new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps }),
    );
  }

  forward(x: tf.Tensor, ctx: AttentionContext): tf.Tensor {
    const h = tf.add(x, this.selfAttn.call(this.inputLayernorm.call(x), ctx));
    return tf.add(h, this.mlp.call(this.postAttentionLayernorm.call(h)));
  }
}

/** The decoder stack: `embed_tokens`, `layers`, `norm` (Hugging Face's `LlamaModel`). */
export class LlamaModel extends Module {
  readonly config: LlamaConfig;
  embedTokens: Embedding;
  layers: ModuleList<LlamaDecoderLayer>;
  norm: RMSNorm;
  private readonly invFreq: Float32Array;

  constructor(config: LlamaConfig) {
    super();
    this.config = config;
    this.embedTokens = this.registerModule('embed_tokens', new Embedding(config.vocabSize, config.hiddenSize));
    this.layers = this.registerModule(
      'layers',
      new ModuleList(Array.from({ length: config.numHiddenLayers }, () => new LlamaDecoderLayer(config))),
    );
    this.norm = this.registerModule('norm', new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps }));
    this.invFreq = ropeInverseFrequencies(config.headDim, config.rope);
  }

  forward(
    inputIds: tf.Tensor2D,
    options: { attentionMask?: tf.Tensor | number[][]; cache?: KVCache | null } = {},
  ): tf.Tensor {
    const [b, t] = inputIds.shape;
    const past = options.cache?.length ?? 0;
    const mask = buildMask(
      b,
      t,
      past,
      options.attentionMask,
      this.config.numAttentionHeads / this.config.numKeyValueHeads,
    );
    const { cos, sin } = ropeTables(this.invFreq, past, t);
    try {
      let h = this.embedTokens.call(inputIds) as tf.Tensor;
      const ctx: AttentionContext = { cos, sin, mask, cache: options.cache ?? null, layerIdx: 0 };
      for (let i = 0; i < this.layers.length; i++) {
        ctx.layerIdx = i;
        h = this.layers.at(i).call(h, ctx);
      }
      return this.norm.call(h);
    } finally {
      tf.dispose([mask, cos, sin]);
    }
  }
}

const FLOAT32_MIN = -3.4028234663852886e38;

/**
 * Causal + padding mask as transformers' eager attention adds it, laid out [B, 1, rep·T, S]: the
 * T query rows repeated for each of the `rep` query heads that share a kv head (see LlamaAttention).
 * The causal part is built here; a padding mask given as a tensor is combined on the backend, so it
 * is never read back (synchronous reads fail on webgpu in Node).
 */
function buildMask(
  b: number,
  t: number,
  past: number,
  attentionMask: tf.Tensor | number[][] | undefined,
  rep: number,
): tf.Tensor {
  const s = past + t;
  const causal = new Float32Array(rep * t * s);
  for (let r = 0; r < rep; r++)
    for (let i = 0; i < t; i++) for (let j = 0; j <= past + i; j++) causal[(r * t + i) * s + j] = 1;
  return tf.tidy(() => {
    let allowed: tf.Tensor = tf.tensor4d(causal, [1, 1, rep * t, s]);
    if (attentionMask !== undefined) {
      const keep = Array.isArray(attentionMask)
        ? tf.tensor2d(attentionMask.flat(), [attentionMask.length, attentionMask[0]?.length ?? 0])
        : attentionMask;
      if (keep.rank !== 2 || keep.shape[0] !== b || keep.shape[1] !== s) {
        throw new Error(
          `attentionMask must be [${b}, ${s}] (batch × past+new positions), got [${keep.shape.join(', ')}]`,
        );
      }
      allowed = tf.mul(allowed, tf.reshape(tf.cast(tf.notEqual(keep, 0), 'float32'), [b, 1, 1, s]));
    } else if (b > 1) allowed = tf.tile(allowed, [b, 1, 1, 1]);
    // 0 where a query may attend, the float32 minimum elsewhere
    return tf.mul(tf.sub(1, allowed), FLOAT32_MIN);
  });
}

/** Options of {@link LlamaForCausalLM.generate}, with transformers' defaults. */
export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 or unset: greedy decoding. Above 0: sampling at this temperature. */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Seed of the sampler (sampling only). */
  seed?: number;
  /** Token ids that end a sequence. Default: the config's `eos_token_id`. */
  eosTokenId?: number | number[];
  /** Called with each new token of the first sequence, as it is produced. */
  onToken?: (token: number) => void;
}

/**
 * A Llama-family causal language model with Hugging Face's module names and weights
 * (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`): Llama 2/3, SmolLM, TinyLlama, Qwen2.
 *
 * @example
 * ```ts
 * const model = await LlamaForCausalLM.fromPretrained('SmolLM-135M');  // or in-memory files
 * const { logits, loss } = model.forward(ids, { labels: ids });
 * const out = await model.generate(ids, { maxNewTokens: 20 });
 * ```
 */
export class LlamaForCausalLM extends Module {
  readonly config: LlamaConfig;
  model: LlamaModel;
  lmHead: Linear;

  /**
   * Builds a model with transformers' initialisation: every linear and embedding weight drawn
   * normal(0, initializer_range), biases zero, norms one. The submodules are built without their own
   * default draws (which transformers' `_init_weights` overwrites anyway) and a tied `lm_head` is not
   * drawn at all, so each weight is drawn once, from the default generator (`manualSeed`).
   */
  constructor(config: LlamaConfig, options: { init?: boolean } = {}) {
    super();
    this.config = config;
    const [model, lmHead] = withoutInit(
      () => [new LlamaModel(config), new Linear(config.hiddenSize, config.vocabSize, { bias: false })] as const,
    );
    this.model = this.registerModule('model', model);
    this.lmHead = this.registerModule('lm_head', lmHead);
    if (config.tieWordEmbeddings) this.lmHead.setParameter('weight', this.model.embedTokens.weight);
    if (options.init !== false) this.initWeights();
  }

  private initWeights(): void {
    const std = this.config.initializerRange;
    for (const [name, p] of this.namedParameters()) {
      if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') continue;
      if (name.endsWith('.bias')) continue; // built as zeros
      // assign shares the drawn tensor's data; tidy drops the drawn tensor's own reference
      tf.tidy(() => {
        p.assign(normalInit(p.shape, std));
      });
    }
  }

  /**
   * Loads a checkpoint as transformers' `from_pretrained` does: a Hugging Face Hub repo id
   * (`'HuggingFaceTB/SmolLM-135M'`: from the local Hub cache, downloaded into it when missing; Node),
   * a checkpoint directory (Node), or its files (anywhere): `config.json` plus `model.safetensors` or a
   * sharded `model.safetensors.index.json`, by Hugging Face's names. The weights are float32 whatever
   * the file's dtype (bf16 and f16 widen exactly); they are read a tensor at a time, so memory peaks
   * near the float32 model plus one tensor, never the file plus the model. Names and shapes are checked
   * against the headers before any weight is read.
   *
   * @example
   * ```ts
   * const model = await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', {
   *   onProgress: ({ file, loaded, total }) => console.log(file, loaded, '/', total),
   * });
   * const offline = await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', { localFilesOnly: true });
   * ```
   */
  static async fromPretrained(files: ModelFiles, options: HubOptions = {}): Promise<LlamaForCausalLM> {
    const source = await openFiles(files, options);
    const config = parseLlamaConfig(JSON.parse(await source.text('config.json')));
    const plan = await planCheckpoint(source);
    let model: LlamaForCausalLM | undefined;
    try {
      model = withoutInit(() => new LlamaForCausalLM(config, { init: false }));
      const own = model.stateDict();
      // Old checkpoints may carry RoPE buffers; tied checkpoints may or may not carry lm_head.
      const ignored = (k: string) =>
        k.endsWith('rotary_emb.inv_freq') || (config.tieWordEmbeddings && k === 'lm_head.weight');
      const wanted = new Set([...plan.entries.keys()].filter((k) => !ignored(k)));
      // every name and shape checked from the headers, as load_state_dict would, before a byte of data is read
      const errors = [...wanted].flatMap((k) => {
        const target = own[k];
        const shape = (plan.entries.get(k) as { shape: number[] }).shape;
        return target && target.shape.join(',') !== shape.join(',')
          ? [
              `size mismatch for ${k}: copying a param with shape [${shape.join(', ')}] from checkpoint, the shape in current model is [${target.shape.join(', ')}]`,
            ]
          : [];
      });
      const missing = Object.keys(own).filter((k) => !wanted.has(k));
      const unexpected = [...wanted].filter((k) => !(k in own));
      if (missing.length) errors.push(`Missing key(s) in state_dict: ${missing.map((k) => `"${k}"`).join(', ')}`);
      if (unexpected.length)
        errors.push(`Unexpected key(s) in state_dict: ${unexpected.map((k) => `"${k}"`).join(', ')}`);
      if (errors.length)
        throw new Error(`Error(s) in loading state_dict for LlamaForCausalLM:\n\t${errors.join('\n\t')}`);
      const loaded = model;
      await plan.read((name, t) => {
        try {
          const target = own[name];
          // a parameter takes the decoded tensor's data as it is (no copy); anything else goes through loadStateDict
          if (target instanceof tf.Variable)
            tf.tidy(() => target.assign(t.dtype === target.dtype ? t : tf.cast(t, target.dtype)));
          else loaded.loadStateDict({ [name]: t }, { strict: false });
        } finally {
          t.dispose();
        }
      }, wanted);
      return model;
    } catch (e) {
      model?.dispose();
      throw new Error(`${source.label}: ${(e as Error).message}`, { cause: e });
    } finally {
      await plan.close();
    }
  }

  /**
   * Logits `[B, T, vocab]` and, with `labels`, the mean next-token cross-entropy (labels shifted
   * by one inside, −100 ignored), as transformers' `LlamaForCausalLM.forward`.
   */
  forward(
    inputIds: tf.Tensor2D,
    options: { attentionMask?: tf.Tensor | number[][]; labels?: tf.Tensor2D; cache?: KVCache | null } = {},
  ): { logits: tf.Tensor3D; loss?: tf.Scalar } {
    if (inputIds.dtype !== 'int32') throw new Error(`inputIds must be int32, got ${inputIds.dtype}`);
    return tf.tidy(() => {
      const h = this.model.call(inputIds, {
        attentionMask: options.attentionMask,
        cache: options.cache ?? null,
      }) as tf.Tensor;
      const logits = this.lmHead.call(h) as tf.Tensor3D;
      if (!options.labels) return { logits };
      const [b, t] = inputIds.shape;
      const shifted = tf.concat([tf.slice(options.labels, [0, 1], [b, t - 1]), tf.fill([b, 1], -100, 'int32')], 1);
      return { logits, loss: crossEntropy(logits, shifted) as tf.Scalar };
    });
  }

  /**
   * Continues each sequence by up to `maxNewTokens` tokens with a KV cache: greedy by default,
   * sampling with temperature / top-k / top-p when `temperature > 0`. Stops a sequence at an
   * end-of-sequence token. Returns prompt + new tokens, as transformers' `generate`.
   */
  async generate(inputIds: tf.Tensor2D | number[][], options: GenerateOptions = {}): Promise<number[][]> {
    const prompt = Array.isArray(inputIds) ? inputIds : ((await inputIds.array()) as number[][]);
    const maxNew = options.maxNewTokens ?? 20;
    const eos = new Set(options.eosTokenId === undefined ? this.config.eosTokenId : [options.eosTokenId].flat());
    const sample = (options.temperature ?? 0) > 0;
    const rng = new Generator(options.seed ?? 0);
    const seqs = prompt.map((r) => [...r]);
    const done = seqs.map(() => false);
    const cache = new KVCache();
    const wasTraining = this.training;
    this.eval();
    try {
      let next: number[][] = seqs.map((s) => s);
      for (let step = 0; step < maxNew && !done.every(Boolean); step++) {
        const ids = tf.tensor2d(next, [next.length, (next[0] as number[]).length], 'int32');
        const last = tf.tidy(() => {
          const { logits } = this.forward(ids, { cache });
          const t = logits.shape[1];
          return tf.reshape(tf.slice(logits, [0, t - 1, 0], [-1, 1, -1]), [logits.shape[0], logits.shape[2]]);
        });
        ids.dispose();
        let chosen: number[];
        if (sample) chosen = ((await last.array()) as number[][]).map((row) => sampleToken(row, options, rng));
        else {
          // greedy: the argmax on the backend, so that only one id per row is read back, not the vocabulary
          const best = tf.argMax(last, -1);
          chosen = Array.from(await best.data());
          best.dispose();
        }
        last.dispose();
        chosen.forEach((tok, i) => {
          if (done[i]) return;
          seqs[i]?.push(tok);
          if (eos.has(tok)) done[i] = true;
        });
        if (!done[0] || eos.has(chosen[0] as number)) options.onToken?.(chosen[0] as number);
        // Finished rows keep feeding their last token; their output is no longer read.
        next = chosen.map((tok) => [tok]);
      }
      return seqs;
    } finally {
      cache.dispose();
      this.train(wasTraining);
    }
  }
}

/** Temperature, then top-k, then top-p (transformers' warper order), then one draw. */
function sampleToken(row: number[], o: GenerateOptions, rng: Generator): number {
  const temp = o.temperature as number;
  let idx = row.map((_, i) => i).sort((a, b) => (row[b] as number) - (row[a] as number));
  if (o.topK !== undefined && o.topK > 0) idx = idx.slice(0, o.topK);
  const max = row[idx[0] as number] as number;
  let probs = idx.map((i) => Math.exp(((row[i] as number) - max) / temp));
  let sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  if (o.topP !== undefined && o.topP < 1) {
    // keep the smallest prefix whose mass reaches top_p (at least one token)
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && (keep === 0 || acc < o.topP)) acc += probs[keep++] as number;
    idx = idx.slice(0, keep);
    probs = probs.slice(0, keep);
    sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
  }
  let u = rng.nextFloat53();
  for (let k = 0; k < probs.length; k++) {
    u -= probs[k] as number;
    if (u < 0) return idx[k] as number;
  }
  return idx[probs.length - 1] as number;
}
