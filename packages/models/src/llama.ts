import * as tf from '@tensorflow/tfjs-core';
import { Generator, type HubOptions, type ModelFiles, openFiles, serializeSafetensors } from '@lora/tensor';
import {
  Embedding,
  type HalfFormat,
  HalfEmbedding,
  HalfLinear,
  Linear,
  Module,
  ModuleList,
  RMSNorm,
  checkpoint,
  crossEntropy,
  gpuKernelsActive,
  transposedVocabBlocks,
  normalInit,
  withoutInit,
} from '@lora/nn';
import { planCheckpoint } from './files';
import { type LlamaConfig, parseLlamaConfig } from './llama-config';
import { llamaKernels } from './llama-kernels';
import { ropeInverseFrequencies, ropeTables } from './rope';

/**
 * How {@link LlamaForCausalLM.fromPretrained} keeps the weights: `'float32'` (the default: every weight
 * widened to float32) or `'checkpoint'` (the Linear and Embedding weights stored in a BF16 or F16
 * checkpoint stay in that 16-bit encoding, decoded on use; see `HalfLinear` in `@lora/nn`).
 */
export type WeightStorage = 'float32' | 'checkpoint';

/**
 * The 16-bit encoding to keep a module's weight in, by module path (`'model.layers.0.self_attn.q_proj'`),
 * or null for float32.
 */
export type WeightFormats = (modulePath: string) => HalfFormat | null;

const FLOAT32: WeightFormats = () => null;

function makeLinear(inF: number, outF: number, bias: boolean, format: HalfFormat | null): Linear {
  return format ? new HalfLinear(inF, outF, { bias, format }) : new Linear(inF, outF, { bias });
}

function at(prefix: string, name: string): string {
  return prefix ? `${prefix}.${name}` : name;
}

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
  /** RoPE tables [T, headDim] for this call's positions. */
  cos: tf.Tensor;
  sin: tf.Tensor;
  /** [B, S]: 1 where a key position may be attended, 0 for padding; null when every position may. */
  keyMask: tf.Tensor | null;
  /** webgpu only: the additive mask for `@lora/kernels`' masked softmax (see `buildGroupedMask`); null elsewhere. */
  groupedMask: tf.Tensor | null;
  cache: KVCache | null;
  layerIdx: number;
}

/** `LlamaRMSNorm`: nn's RMSNorm, computed through {@link llamaKernels}. */
class LlamaRMSNorm extends RMSNorm {
  override forward(x: tf.Tensor): tf.Tensor {
    return llamaKernels.rmsNorm(x, this.weight, this.eps);
  }
}

/** Multi-head attention with grouped-query heads and RoPE (Hugging Face's `LlamaAttention`). */
export class LlamaAttention extends Module {
  readonly config: LlamaConfig;
  qProj: Linear;
  kProj: Linear;
  vProj: Linear;
  oProj: Linear;

  constructor(config: LlamaConfig, formats: WeightFormats = FLOAT32, prefix = '') {
    super();
    this.config = config;
    const { hiddenSize: h, numAttentionHeads: nh, numKeyValueHeads: nkv, headDim: d, attentionBias } = config;
    const f = (name: string) => formats(at(prefix, name));
    this.qProj = this.registerModule('q_proj', makeLinear(h, nh * d, attentionBias, f('q_proj')));
    this.kProj = this.registerModule('k_proj', makeLinear(h, nkv * d, attentionBias, f('k_proj')));
    this.vProj = this.registerModule('v_proj', makeLinear(h, nkv * d, attentionBias, f('v_proj')));
    // Qwen2 puts a bias on q, k and v only
    this.oProj = this.registerModule(
      'o_proj',
      makeLinear(nh * d, h, attentionBias && config.modelType === 'llama', f('o_proj')),
    );
  }

  forward(x: tf.Tensor, ctx: AttentionContext): tf.Tensor {
    const [b, t] = x.shape as [number, number, number];
    const { numAttentionHeads: nh, numKeyValueHeads: nkv, headDim: d } = this.config;
    // [B, T, n·d] → heads [B, n, T, d], rotated for q and k (one dispatch each on webgpu)
    const q = llamaKernels.ropeHeads(this.qProj.call(x), ctx.cos, ctx.sin, nh);
    let k = llamaKernels.ropeHeads(this.kProj.call(x), ctx.cos, ctx.sin, nkv);
    let v = llamaKernels.ropeHeads(this.vProj.call(x), null, null, nkv);
    if (ctx.cache) {
      const past = ctx.cache.layers[ctx.layerIdx];
      if (past) {
        k = tf.concat([past.k, k], 2);
        v = tf.concat([past.v, v], 2);
      }
      ctx.cache.layers[ctx.layerIdx] = { k: tf.keep(k as tf.Tensor4D), v: tf.keep(v as tf.Tensor4D) };
      if (past) tf.dispose([past.k, past.v]);
    }
    // grouped-query heads are handled inside (query head i reads kv head ⌊i / rep⌋), never repeated
    const out = llamaKernels.attention(q, k, v, {
      causal: true,
      ...(ctx.keyMask ? { keyMask: ctx.keyMask } : {}),
      ...(ctx.groupedMask ? { groupedMask: ctx.groupedMask } : {}),
    });
    const merged = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, t, nh * d]);
    return this.oProj.call(merged);
  }
}

/** SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`. */
export class LlamaMLP extends Module {
  gateProj: Linear;
  upProj: Linear;
  downProj: Linear;

  constructor(config: LlamaConfig, formats: WeightFormats = FLOAT32, prefix = '') {
    super();
    const bias = config.mlpBias;
    const { hiddenSize: h, intermediateSize: i } = config;
    const f = (name: string) => formats(at(prefix, name));
    this.gateProj = this.registerModule('gate_proj', makeLinear(h, i, bias, f('gate_proj')));
    this.upProj = this.registerModule('up_proj', makeLinear(h, i, bias, f('up_proj')));
    this.downProj = this.registerModule('down_proj', makeLinear(i, h, bias, f('down_proj')));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return this.downProj.call(llamaKernels.swiglu(this.gateProj.call(x), this.upProj.call(x)));
  }
}

/** One pre-norm transformer block. */
export class LlamaDecoderLayer extends Module {
  selfAttn: LlamaAttention;
  mlp: LlamaMLP;
  inputLayernorm: LlamaRMSNorm;
  postAttentionLayernorm: LlamaRMSNorm;

  constructor(config: LlamaConfig, formats: WeightFormats = FLOAT32, prefix = '') {
    super();
    this.selfAttn = this.registerModule('self_attn', new LlamaAttention(config, formats, at(prefix, 'self_attn')));
    this.mlp = this.registerModule('mlp', new LlamaMLP(config, formats, at(prefix, 'mlp')));
    this.inputLayernorm = this.registerModule(
      'input_layernorm',
      new LlamaRMSNorm(config.hiddenSize, { eps: config.rmsNormEps }),
    );
    this.postAttentionLayernorm = this.registerModule(
      'post_attention_layernorm',
      new LlamaRMSNorm(config.hiddenSize, { eps: config.rmsNormEps }),
    );
  }

  forward(x: tf.Tensor, ctx: AttentionContext): tf.Tensor {
    // a scope per layer: its intermediates go as soon as it is done (the gradient keeps what it needs)
    return tf.tidy(() => {
      const h = tf.add(x, this.selfAttn.call(this.inputLayernorm.call(x), ctx));
      return tf.add(h, this.mlp.call(this.postAttentionLayernorm.call(h)));
    });
  }
}

/** The decoder stack: `embed_tokens`, `layers`, `norm` (Hugging Face's `LlamaModel`). */
export class LlamaModel extends Module {
  readonly config: LlamaConfig;
  embedTokens: Embedding;
  layers: ModuleList<LlamaDecoderLayer>;
  norm: RMSNorm;
  /**
   * Recompute each decoder layer's activations in the backward pass instead of keeping them
   * (transformers' `gradient_checkpointing`): training memory drops from every layer's activations
   * to every layer's input plus one layer's activations, for about one more forward pass of compute.
   * Applies in training mode without a KV cache.
   */
  gradientCheckpointing = false;
  private readonly invFreq: Float32Array;
  /** Positions the RoPE tables cover; they grow (doubling) when a call needs more. */
  private ropeLength = 0;
  private ropeRows: { past: number; t: number } | null = null;

  constructor(config: LlamaConfig, formats: WeightFormats = FLOAT32, prefix = '') {
    super();
    this.config = config;
    const embedFormat = formats(at(prefix, 'embed_tokens'));
    this.embedTokens = this.registerModule(
      'embed_tokens',
      embedFormat
        ? new HalfEmbedding(config.vocabSize, config.hiddenSize, { format: embedFormat })
        : new Embedding(config.vocabSize, config.hiddenSize),
    );
    this.layers = this.registerModule(
      'layers',
      new ModuleList(
        Array.from(
          { length: config.numHiddenLayers },
          (_, i) => new LlamaDecoderLayer(config, formats, at(prefix, `layers.${i}`)),
        ),
      ),
    );
    this.norm = this.registerModule('norm', new LlamaRMSNorm(config.hiddenSize, { eps: config.rmsNormEps }));
    this.invFreq = ropeInverseFrequencies(config.headDim, config.rope);
    // cos/sin for the first positions, kept (not state: rebuilt from the config); more on demand
    this.registerBuffer('rope_cos', null, false);
    this.registerBuffer('rope_sin', null, false);
    // the tables' rows of the last call's positions, kept while calls cover the same ones (training)
    this.registerBuffer('rope_cos_rows', null, false);
    this.registerBuffer('rope_sin_rows', null, false);
    this.ensureRope(Math.min(config.maxPositionEmbeddings || 2048, 2048));
  }

  private ensureRope(length: number): void {
    if (length <= this.ropeLength) return;
    const n = Math.max(length, 2 * this.ropeLength);
    const { cos, sin } = ropeTables(this.invFreq, 0, n);
    this.setBuffer('rope_cos', cos);
    this.setBuffer('rope_sin', sin);
    this.ropeLength = n;
    this.ropeRows = null;
  }

  /** cos, sin [t, headDim] for positions past … past + t − 1, owned by the model (not to be disposed). */
  private ropeFor(past: number, t: number): { cos: tf.Tensor; sin: tf.Tensor } {
    this.ensureRope(past + t);
    if (this.ropeRows?.past !== past || this.ropeRows.t !== t) {
      this.setBuffer('rope_cos_rows', tf.slice(this.getBuffer('rope_cos') as tf.Tensor, [past, 0], [t, -1]));
      this.setBuffer('rope_sin_rows', tf.slice(this.getBuffer('rope_sin') as tf.Tensor, [past, 0], [t, -1]));
      this.ropeRows = { past, t };
    }
    return { cos: this.getBuffer('rope_cos_rows') as tf.Tensor, sin: this.getBuffer('rope_sin_rows') as tf.Tensor };
  }

  forward(
    inputIds: tf.Tensor2D,
    options: { attentionMask?: tf.Tensor | number[][]; cache?: KVCache | null } = {},
  ): tf.Tensor {
    const [b, t] = inputIds.shape;
    const past = options.cache?.length ?? 0;
    const { cos, sin } = this.ropeFor(past, t);
    let keyMask: tf.Tensor | null = null;
    let groupedMask: tf.Tensor | null = null;
    try {
      keyMask = options.attentionMask === undefined ? null : keyMaskOf(options.attentionMask, b, past + t);
      // webgpu: one additive mask for every layer's fused masked softmax
      if (gpuKernelsActive())
        groupedMask = buildGroupedMask(
          b,
          t,
          past,
          keyMask,
          this.config.numAttentionHeads / this.config.numKeyValueHeads,
        );
      let h = this.embedTokens.call(inputIds) as tf.Tensor;
      const cache = options.cache ?? null;
      const recompute = this.gradientCheckpointing && this.training && cache === null;
      for (let i = 0; i < this.layers.length; i++) {
        const layer = this.layers.at(i);
        if (recompute) {
          // the per-call tensors go in as inputs, so that the recomputation still has them
          const inputs = [h, cos, sin, ...(keyMask ? [keyMask] : []), ...(groupedMask ? [groupedMask] : [])];
          const km = keyMask !== null;
          const gm = groupedMask !== null;
          h = checkpoint(
            (x, c, s, ...rest) =>
              layer.call(x, {
                cos: c,
                sin: s,
                keyMask: km ? (rest[0] as tf.Tensor) : null,
                groupedMask: gm ? (rest[km ? 1 : 0] as tf.Tensor) : null,
                cache: null,
                layerIdx: i,
              }),
            inputs,
            { module: layer },
          );
        } else h = layer.call(h, { cos, sin, keyMask, groupedMask, cache, layerIdx: i });
      }
      return this.norm.call(h);
    } finally {
      tf.dispose([...(keyMask ? [keyMask] : []), ...(groupedMask ? [groupedMask] : [])]);
    }
  }
}

const FLOAT32_MIN = -3.4028234663852886e38;

/**
 * Causal + padding mask as transformers' eager attention adds it, laid out [B, 1, rep·T, S] (or
 * [1, 1, rep·T, S] without padding): the T query rows repeated for each of the `rep` query heads that
 * share a kv head, as `@lora/kernels`' masked softmax takes it on webgpu. The causal part is built
 * here; the padding part (`keyMask` [B, S], 0/1) is combined on the backend, never read back
 * (synchronous reads fail on webgpu in Node).
 */
function buildGroupedMask(b: number, t: number, past: number, keyMask: tf.Tensor | null, rep: number): tf.Tensor {
  const s = past + t;
  const causal = new Float32Array(rep * t * s);
  for (let r = 0; r < rep; r++)
    for (let i = 0; i < t; i++) for (let j = 0; j <= past + i; j++) causal[(r * t + i) * s + j] = 1;
  return tf.tidy(() => {
    let allowed: tf.Tensor = tf.tensor4d(causal, [1, 1, rep * t, s]);
    if (keyMask) allowed = tf.mul(allowed, tf.reshape(keyMask, [b, 1, 1, s]));
    else if (b > 1) allowed = tf.tile(allowed, [b, 1, 1, 1]);
    // 0 where a query may attend, the float32 minimum elsewhere
    return tf.mul(tf.sub(1, allowed), FLOAT32_MIN);
  });
}

/** An attention mask [B, S] (1 attend, 0 padding; a tensor or nested arrays) as float32 0/1. */
function keyMaskOf(attentionMask: tf.Tensor | number[][], b: number, s: number): tf.Tensor {
  return tf.tidy(() => {
    const keep = Array.isArray(attentionMask)
      ? tf.tensor2d(attentionMask.flat(), [attentionMask.length, attentionMask[0]?.length ?? 0])
      : attentionMask;
    if (keep.rank !== 2 || keep.shape[0] !== b || keep.shape[1] !== s) {
      throw new Error(
        `attentionMask must be [${b}, ${s}] (batch × past+new positions), got [${keep.shape.join(', ')}]`,
      );
    }
    return tf.cast(tf.notEqual(keep, 0), 'float32');
  });
}

/** Options of {@link LlamaForCausalLM.forward}. */
export interface CausalLMOptions {
  /** [B, S]: 1 for tokens to attend to, 0 for padding (S = cached + new positions). */
  attentionMask?: tf.Tensor | number[][];
  /** Token ids to predict, shifted by one inside; −100 is ignored. */
  labels?: tf.Tensor2D;
  cache?: KVCache | null;
  /** False: with labels, compute only the loss, without materialising the logits. Default true. */
  returnLogits?: boolean;
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
  /** wasm: the frozen head weight's transposed vocabulary blocks, for the fused loss, and the data they were cut from. */
  private headBlocks: { source: object; blocks: tf.Tensor[] } | null = null;

  /**
   * Builds a model with transformers' initialisation: every linear and embedding weight drawn
   * normal(0, initializer_range), biases zero, norms one. The submodules are built without their own
   * default draws (which transformers' `_init_weights` overwrites anyway) and a tied `lm_head` is not
   * drawn at all, so each weight is drawn once, from the default generator (`manualSeed`).
   * `gradientCheckpointing: true` as {@link gradientCheckpointingEnable}. `weightFormats` (with
   * `init: false`; what `fromPretrained` passes for `weightStorage: 'checkpoint'`) builds the modules it
   * names as 16-bit layers (`HalfLinear`, `HalfEmbedding`) holding zero codes.
   */
  constructor(
    config: LlamaConfig,
    options: { init?: boolean; gradientCheckpointing?: boolean; weightFormats?: WeightFormats } = {},
  ) {
    super();
    this.config = config;
    const formats = options.weightFormats ?? FLOAT32;
    if (options.weightFormats && options.init !== false)
      throw new Error('LlamaForCausalLM: weightFormats builds 16-bit layers to load into; pass init: false with it');
    // a tied head shares the embedding's codes, so it is stored as the embedding is
    const headFormat = formats(config.tieWordEmbeddings ? 'model.embed_tokens' : 'lm_head');
    const [model, lmHead] = withoutInit(
      () =>
        [
          new LlamaModel(config, formats, 'model'),
          makeLinear(config.hiddenSize, config.vocabSize, false, headFormat),
        ] as const,
    );
    this.model = this.registerModule('model', model);
    this.lmHead = this.registerModule('lm_head', lmHead);
    if (config.tieWordEmbeddings) this.lmHead.setParameter('weight', this.model.embedTokens.weight);
    if (options.init !== false) this.initWeights();
    if (options.gradientCheckpointing) this.gradientCheckpointingEnable();
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
   * `weightStorage: 'checkpoint'` keeps the Linear and Embedding weights of a BF16 or F16 checkpoint in
   * that encoding (`HalfLinear`, `HalfEmbedding` of `@lora/nn`): the model holds about the file's size
   * instead of twice it, and each weight is decoded to float32 (exactly) when a forward uses it, then
   * dropped. Compute stays float32, so logits equal the float32-loaded model's; each forward pays for
   * the decoding (see BENCHMARKS.md). Norm weights and biases stay float32. A weight the checkpoint
   * stores in F32 (or F64) stays a float32 Linear: `'checkpoint'` keeps each weight as the file does.
   * The weights are frozen (LoRA trains beside them); merging an adapter rounds the merged weight back
   * to the 16-bit encoding, as PEFT merging into a bf16 model does.
   *
   * @example
   * ```ts
   * const model = await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', {
   *   onProgress: ({ file, loaded, total }) => console.log(file, loaded, '/', total),
   * });
   * const offline = await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', { localFilesOnly: true });
   * const small = await LlamaForCausalLM.fromPretrained('HuggingFaceTB/SmolLM-135M', { weightStorage: 'checkpoint' });
   * ```
   */
  static async fromPretrained(
    files: ModelFiles,
    options: HubOptions & { weightStorage?: WeightStorage } = {},
  ): Promise<LlamaForCausalLM> {
    const storage = options.weightStorage ?? 'float32';
    if (storage !== 'float32' && storage !== 'checkpoint')
      throw new Error(
        `fromPretrained: weightStorage is ${JSON.stringify(storage)}; use 'float32' (the default) or 'checkpoint' (keep BF16 / F16 weights 16-bit)`,
      );
    const source = await openFiles(files, options);
    const config = parseLlamaConfig(JSON.parse(await source.text('config.json')));
    const plan = await planCheckpoint(source);
    let model: LlamaForCausalLM | undefined;
    try {
      const weightFormats: WeightFormats = (path) => {
        const dtype = plan.entries.get(`${path}.weight`)?.dtype;
        return dtype === 'BF16' ? 'bf16' : dtype === 'F16' ? 'f16' : null;
      };
      model = withoutInit(
        () => new LlamaForCausalLM(config, { init: false, ...(storage === 'checkpoint' ? { weightFormats } : {}) }),
      );
      const own = model.stateDict();
      // 16-bit layers by weight name; their parameter holds words, so their shape is the layer's
      const half = new Map<string, HalfLinear | HalfEmbedding>();
      for (const [path, m] of model.namedModules())
        if (m instanceof HalfLinear || m instanceof HalfEmbedding) half.set(`${path}.weight`, m);
      const shapeOf = (k: string): number[] | undefined => {
        return half.get(k)?.weightShape ?? own[k]?.shape;
      };
      // Old checkpoints may carry RoPE buffers; tied checkpoints may or may not carry lm_head.
      const ignored = (k: string) =>
        k.endsWith('rotary_emb.inv_freq') || (config.tieWordEmbeddings && k === 'lm_head.weight');
      const wanted = new Set([...plan.entries.keys()].filter((k) => !ignored(k)));
      // every name and shape checked from the headers, as load_state_dict would, before a byte of data is read
      const errors = [...wanted].flatMap((k) => {
        const target = shapeOf(k);
        const shape = (plan.entries.get(k) as { shape: number[] }).shape;
        return target && target.join(',') !== shape.join(',')
          ? [
              `size mismatch for ${k}: copying a param with shape [${shape.join(', ')}] from checkpoint, the shape in current model is [${target.join(', ')}]`,
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
      await plan.read(
        (name, t) => {
          try {
            const target = own[name];
            // a parameter takes the decoded tensor's data as it is (no copy); anything else goes through loadStateDict
            if (target instanceof tf.Variable)
              tf.tidy(() => target.assign(t.dtype === target.dtype ? t : tf.cast(t, target.dtype)));
            else loaded.loadStateDict({ [name]: t }, { strict: false });
          } finally {
            t.dispose();
          }
        },
        wanted,
        {
          onHalfCodes: (name, codes) => {
            const layer = half.get(name);
            if (!layer) return false;
            layer.setCodes(codes);
            return true;
          },
        },
      );
      return model;
    } catch (e) {
      model?.dispose();
      throw new Error(`${source.label}: ${(e as Error).message}`, { cause: e });
    } finally {
      await plan.close();
    }
  }

  /**
   * The model's weights as a `model.safetensors` (transformers' `save_pretrained` names; a tied
   * `lm_head` left out, as transformers does). A model with 16-bit weights (`weightStorage:
   * 'checkpoint'`, merged or not) writes them in their dtype, and its float32 tensors (norms, biases) in
   * the same dtype, as transformers saves a bf16 model: every tensor bf16 (or f16). A float32 model
   * writes F32. Each 16-bit weight is decoded while the file is built, so memory peaks near the float32
   * model for the call.
   *
   * @example
   * ```ts
   * const merged = peft.mergeAndUnload() as LlamaForCausalLM;
   * await writeFile('out/model.safetensors', await merged.serializeCheckpoint());
   * ```
   */
  async serializeCheckpoint(): Promise<Uint8Array> {
    const tensors: Record<string, tf.Tensor> = {};
    const decoded: tf.Tensor[] = [];
    let format: HalfFormat | null = null;
    try {
      for (const [path, m] of this.namedModules()) {
        for (const [name, p] of m.namedParameters('', false)) {
          const key = path ? `${path}.${name}` : name;
          if (this.config.tieWordEmbeddings && key === 'lm_head.weight') continue;
          if ((m instanceof HalfLinear || m instanceof HalfEmbedding) && name === 'weight') {
            const w = m.decodeWeight();
            decoded.push(w);
            tensors[key] = w;
            format ??= m.format;
          } else tensors[key] = p;
        }
      }
      const dtype = format === 'bf16' ? 'BF16' : format === 'f16' ? 'F16' : 'F32';
      return await serializeSafetensors(tensors, { metadata: { format: 'pt' }, dtype });
    } finally {
      tf.dispose(decoded);
    }
  }

  /**
   * Logits `[B, T, vocab]` and, with `labels`, the mean next-token cross-entropy (labels shifted
   * by one inside, −100 ignored), as transformers' `LlamaForCausalLM.forward`.
   *
   * With `returnLogits: false` (and labels) only the loss is computed, by the LM head's fused
   * cross-entropy, which never holds the [B·T, vocab] logits (400 MB at 2048 tokens of a 49k
   * vocabulary) nor their gradient: the way to train on long sequences.
   *
   * @example
   * ```ts
   * const { loss } = model.forward(ids, { labels: ids, returnLogits: false });
   * ```
   */
  forward(
    inputIds: tf.Tensor2D,
    options: CausalLMOptions & { labels: tf.Tensor2D; returnLogits: false },
  ): { logits?: undefined; loss: tf.Scalar };
  forward(inputIds: tf.Tensor2D, options?: CausalLMOptions): { logits: tf.Tensor3D; loss?: tf.Scalar };
  forward(inputIds: tf.Tensor2D, options: CausalLMOptions = {}): { logits?: tf.Tensor3D; loss?: tf.Scalar } {
    if (inputIds.dtype !== 'int32') throw new Error(`inputIds must be int32, got ${inputIds.dtype}`);
    if (options.returnLogits === false && !options.labels)
      throw new Error('forward: returnLogits: false computes only the loss, so it needs labels');
    return tf.tidy(() => {
      const h = this.model.call(inputIds, {
        attentionMask: options.attentionMask,
        cache: options.cache ?? null,
      }) as tf.Tensor;
      if (!options.labels) return { logits: this.lmHead.call(h) as tf.Tensor3D };
      const [b, t] = inputIds.shape;
      const shifted = tf.concat([tf.slice(options.labels, [0, 1], [b, t - 1]), tf.fill([b, 1], -100, 'int32')], 1);
      const head = this.lmHead;
      if (options.returnLogits === false) {
        // the fused head needs the plain layer (LoRA or modules_to_save on lm_head, or hooks, take the general path)
        if (head instanceof Linear && head.constructor === Linear && !head.bias && !head.hasForwardHooks) {
          const vocabBlocks = this.vocabBlocks(head.weight);
          return {
            loss: llamaKernels.lmHeadLoss(tf.reshape(h, [b * t, -1]), head.weight, tf.reshape(shifted, [b * t]), {
              ...(vocabBlocks ? { vocabBlocks } : {}),
            }),
          };
        }
        return { loss: crossEntropy(head.call(h) as tf.Tensor, shifted) as tf.Scalar };
      }
      const logits = head.call(h) as tf.Tensor3D;
      return { logits, loss: crossEntropy(logits, shifted) as tf.Scalar };
    });
  }

  /**
   * On wasm, a frozen head weight cut into transposed vocabulary blocks (see `transposedVocabBlocks`),
   * kept from call to call (113 MiB for SmolLM's head) and cut again when the weight's data changes.
   */
  private vocabBlocks(weight: tf.Variable): tf.Tensor[] | undefined {
    if (tf.getBackend() !== 'wasm' || weight.trainable) {
      this.dropHeadBlocks();
      return undefined;
    }
    if (this.headBlocks?.source !== weight.dataId) {
      this.dropHeadBlocks();
      this.headBlocks = { source: weight.dataId, blocks: transposedVocabBlocks(weight).map((t) => tf.keep(t)) };
    }
    return this.headBlocks.blocks;
  }

  private dropHeadBlocks(): void {
    if (this.headBlocks) tf.dispose(this.headBlocks.blocks);
    this.headBlocks = null;
  }

  override dispose(): void {
    this.dropHeadBlocks();
    super.dispose();
  }

  /**
   * Turns on gradient checkpointing (transformers' `gradient_checkpointing_enable()`): each decoder
   * layer's activations are recomputed in the backward pass rather than kept. See
   * {@link LlamaModel.gradientCheckpointing}.
   *
   * @example
   * ```ts
   * model.gradientCheckpointingEnable();
   * const peft = getPeftModel(model, { r: 8, targetModules: ['q_proj', 'v_proj'] });
   * ```
   */
  gradientCheckpointingEnable(): this {
    this.model.gradientCheckpointing = true;
    return this;
  }

  /** Turns gradient checkpointing off (transformers' `gradient_checkpointing_disable()`). */
  gradientCheckpointingDisable(): this {
    this.model.gradientCheckpointing = false;
    return this;
  }

  /** Whether gradient checkpointing is on (transformers' `is_gradient_checkpointing`). */
  get isGradientCheckpointing(): boolean {
    return this.model.gradientCheckpointing;
  }

  /**
   * Continues each sequence by up to `maxNewTokens` tokens with a KV cache: greedy by default,
   * sampling with temperature / top-k / top-p when `temperature > 0`. Stops a sequence at an
   * end-of-sequence token. Returns prompt + new tokens, as transformers' `generate`.
   *
   * Prompts of different lengths need no padding: they are continued in groups of one length, each
   * group batched (greedy results are each prompt's own; sampling draws each group from `seed`, and
   * `onToken` follows the first prompt).
   *
   * @example
   * ```ts
   * const ids = [tokenizer.encode('Your lucky').ids, tokenizer.encode('Today is a').ids];
   * const [a, b] = await model.generate(ids, { maxNewTokens: 20 });
   * ```
   */
  async generate(inputIds: tf.Tensor2D | number[][], options: GenerateOptions = {}): Promise<number[][]> {
    const prompt = Array.isArray(inputIds) ? inputIds : ((await inputIds.array()) as number[][]);
    const lengths = [...new Set(prompt.map((row) => row.length))];
    if (lengths.length > 1) {
      const out: number[][] = new Array(prompt.length);
      for (const length of lengths) {
        const rows = prompt.flatMap((row, i) => (row.length === length ? [i] : []));
        const { onToken, ...rest } = options;
        const got = await this.generate(
          rows.map((i) => prompt[i] as number[]),
          rows[0] === 0 && onToken ? { ...rest, onToken } : rest,
        );
        rows.forEach((i, j) => {
          out[i] = got[j] as number[];
        });
      }
      return out;
    }
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
