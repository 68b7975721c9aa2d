import { LoraConfigError } from '../errors';
import { TargetModuleError } from '../targets';
import * as tf from '@tensorflow/tfjs-core';
import { Embedding, Linear, Module, ModuleDict, ParameterDict, embedding, linear, storedWeightRefusal } from '@lora/nn';
import { allFinite } from '../all-finite';
import type { LoraConfig } from '../lora-config';
import { inputEmbeddingsPath, tiedModulePaths } from '../model-embeddings';

/** An adapter's original rows, kept to unmerge (PEFT's `trainable_tokens_original`, a non-persistent buffer). */
class OriginalRows extends Module {
  constructor(rows: tf.Tensor) {
    super();
    this.registerBuffer('rows', rows, false);
  }
  get rows(): tf.Tensor {
    return this.getBuffer('rows') as tf.Tensor;
  }
  forward(): never {
    throw new Error('original rows are a buffer holder');
  }
}

/**
 * `[n, numRows]` 0/1 matrix picking row `indices[j]` for entry j. An index listed again later wins,
 * as in torch's `index_copy` (later writes replace earlier ones).
 */
function selection(indices: number[], numRows: number): tf.Tensor2D {
  return tf.tidy(() => {
    const keep = indices.map((v, j) => (indices.indexOf(v, j + 1) === -1 ? 1 : 0));
    const hits = tf.equal(
      tf.tensor2d(indices, [indices.length, 1], 'int32'),
      tf.reshape(tf.range(0, numRows, 1, 'int32'), [1, numRows]),
    );
    return tf.mul(tf.cast(hits, 'float32'), tf.tensor2d(keep, [indices.length, 1])) as tf.Tensor2D;
  });
}

/**
 * `weight` with rows `indices` replaced by `rows` ([n, dim]), torch's `index_copy(0, indices, rows)`.
 * Exact: untouched rows are multiplied by 1, replaced ones are a sum of one row and zeros. The caller
 * owns the result.
 *
 * @example
 * ```ts
 * const merged = replaceRows(embedding.weight, [5, 7], newRows);
 * ```
 */
export function replaceRows(weight: tf.Tensor, indices: number[], rows: tf.Tensor): tf.Tensor2D {
  const numRows = weight.shape[0] as number;
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= numRows)
      throw new Error(
        `token index ${i} is out of range for a weight of ${numRows} rows; use indices in [0, ${numRows})`,
      );
  }
  if (rows.shape[0] !== indices.length || rows.shape[1] !== weight.shape[1]) {
    throw new Error(
      `replaceRows: ${indices.length} indices need rows of shape [${indices.length}, ${weight.shape[1]}], got [${rows.shape.join(', ')}]`,
    );
  }
  return tf.tidy(() => {
    const sel = selection(indices, numRows);
    const hit = tf.reshape(tf.sum(sel, 0), [numRows, 1]);
    return tf.add(tf.mul(weight, tf.sub(1, hit)), tf.matMul(sel, rows, true, false)) as tf.Tensor2D;
  });
}

/**
 * PEFT's `TrainableTokensLayer`: trains chosen rows of an embedding (or of an output layer over the
 * vocabulary) as whole new rows — `trainable_tokens_delta[adapter]` ([n, dim], named "delta" in PEFT
 * but holding the rows' values, initialised from the original rows) — while the rest of the table
 * stays frozen. A layer tied to another (an lm_head sharing the embedding's weight) shares that
 * layer's rows, indices and originals and saves nothing of its own.
 *
 * @example
 * ```ts
 * const layer = (peft.model.getSubmodule('model.embed_tokens') as TrainableTokensWrapper).tokenAdapter;
 * layer.tokenIndices.get('default');              // [32000, 32001]
 * layer.trainableTokensDelta.get('default').shape; // [2, hidden]
 * ```
 */
export class TrainableTokensLayer extends Module {
  baseLayer: Embedding | Linear;
  /** The layer whose rows this one follows (weight tying), or null. */
  readonly tiedAdapter: TrainableTokensLayer | null;
  readonly trainableTokensDelta: ParameterDict;
  readonly trainableTokensOriginal: ModuleDict<OriginalRows>;
  readonly tokenIndices: Map<string, number[]>;
  activeAdapters: string[] = [];
  disableAdapters = false;
  readonly mergedAdapters: string[] = [];
  /** Per-row adapter names for the call in progress (mixed batches), set by PeftModel. */
  batchAdapterNames: string[] | null = null;

  constructor(base: Embedding | Linear, tiedAdapter: TrainableTokensLayer | null = null) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.tiedAdapter = tiedAdapter;
    if (tiedAdapter) {
      // shared, not registered: the rows live (and are saved) under the layer they are tied to
      this.trainableTokensDelta = tiedAdapter.trainableTokensDelta;
      this.trainableTokensOriginal = tiedAdapter.trainableTokensOriginal;
      this.tokenIndices = tiedAdapter.tokenIndices;
    } else {
      this.trainableTokensDelta = this.registerModule('trainable_tokens_delta', new ParameterDict());
      this.trainableTokensOriginal = this.registerModule('trainable_tokens_original', new ModuleDict<OriginalRows>());
      this.tokenIndices = new Map();
    }
  }

  /** Rows of the base weight (vocabulary size). */
  get numRows(): number {
    return this.baseLayer.weight.shape[0] as number;
  }

  /** Adds an adapter training rows `indices`, starting from their current values. A tied layer follows its owner. */
  updateLayer(name: string, indices: number[]): void {
    if (this.tiedAdapter) return;
    if (!Array.isArray(indices) || indices.length === 0)
      throw new LoraConfigError(
        `trainable_token_indices for adapter '${name}' must be a non-empty list of token ids, got ${JSON.stringify(indices)}`,
      );
    for (const i of indices) {
      if (!Number.isInteger(i) || i < 0 || i >= this.numRows) {
        throw new LoraConfigError(
          `trainable_token_indices: token index ${i} is out of range for a layer of ${this.numRows} rows; use indices in [0, ${this.numRows})`,
        );
      }
    }
    if (this.tokenIndices.has(name)) return;
    const refused = storedWeightRefusal(this.baseLayer, `trainable_token_indices for adapter '${name}'`);
    if (refused) throw new LoraConfigError(refused);
    const originals = tf.tidy(() => tf.gather(this.baseLayer.weight, tf.tensor1d(indices, 'int32')));
    this.tokenIndices.set(name, [...indices]);
    this.trainableTokensDelta.set(name, tf.clone(originals));
    this.trainableTokensOriginal.set(name, new OriginalRows(originals));
  }

  /** Forgets an adapter; the owning (untied) layer frees its rows. */
  deleteAdapter(name: string): void {
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
    const merged = this.mergedAdapters.indexOf(name);
    if (merged >= 0) this.mergedAdapters.splice(merged, 1);
    if (this.tiedAdapter || !this.tokenIndices.has(name)) return;
    this.tokenIndices.delete(name);
    this.trainableTokensDelta.delete(name);
    this.trainableTokensOriginal.delete(name)?.dispose();
  }

  /** Adapter names this layer holds rows for. */
  get adapters(): string[] {
    return [...this.tokenIndices.keys()];
  }

  private checkOverlappingTokens(names: string[]): void {
    const all = [...new Set([...this.mergedAdapters, ...names])];
    if (all.length <= 1) return;
    const seen = new Set<number>();
    for (const name of all) {
      const idx = this.tokenIndices.get(name) ?? [];
      if (idx.some((i) => seen.has(i))) {
        throw new LoraConfigError(
          `Token indices of adapter ${name} are already defined and would result in undefined merging behavior. Only disjunct token indices are currently supported.`,
        );
      }
      for (const i of idx) seen.add(i);
    }
  }

  /** The base weight with the rows of `names` in place (PEFT's `get_merged_weights`). The caller owns it. */
  getMergedWeights(names: string[] = this.activeAdapters): tf.Tensor2D {
    return tf.tidy(() => {
      let w: tf.Tensor = this.baseLayer.weight;
      for (const n of names.filter((a) => this.tokenIndices.has(a)))
        w = replaceRows(w, this.tokenIndices.get(n) as number[], this.trainableTokensDelta.get(n));
      return w === this.baseLayer.weight ? (tf.clone(w) as tf.Tensor2D) : (w as tf.Tensor2D);
    });
  }

  /**
   * Writes the adapters' rows into the base weight (PEFT's `merge`); overlapping rows are refused.
   * With `safeMerge` the new table is checked for NaN/Inf before it replaces the weight, reading the
   * backend, so a safe merge returns a Promise (as `LoraLayerBase.merge`).
   */
  merge(options?: { adapterNames?: string[]; safeMerge?: false }): void;
  merge(options: { adapterNames?: string[]; safeMerge: true }): Promise<void>;
  merge(options: { adapterNames?: string[]; safeMerge?: boolean }): void | Promise<void>;
  merge(options: { adapterNames?: string[]; safeMerge?: boolean } = {}): void | Promise<void> {
    const names = (options.adapterNames ?? this.activeAdapters).filter(
      (n) => this.tokenIndices.has(n) && !this.mergedAdapters.includes(n),
    );
    if (names.length === 0) return options.safeMerge ? Promise.resolve() : undefined;
    this.checkOverlappingTokens(names);
    const merged = this.getMergedWeights(names);
    const commit = () => {
      this.baseLayer.weight.assign(merged);
      merged.dispose();
      this.mergedAdapters.push(...names);
    };
    if (!options.safeMerge) return commit();
    return (async () => {
      if (!(await allFinite([merged]))) {
        merged.dispose();
        throw new Error(`NaNs detected in the merged weights. The adapter ${names.join(', ')} seems to be broken`);
      }
      commit();
    })();
  }

  /** Puts the original rows back, last merged first (PEFT's `unmerge`). */
  unmerge(): void {
    while (this.mergedAdapters.length) {
      const name = this.mergedAdapters.pop() as string;
      const original = this.trainableTokensOriginal.has(name) ? this.trainableTokensOriginal.get(name).rows : null;
      if (!original) continue;
      const w = this.baseLayer.weight;
      tf.tidy(() => w.assign(replaceRows(w, this.tokenIndices.get(name) as number[], original)));
    }
  }

  /**
   * The base layer's output with the rows of `names` in place of the originals, without building the
   * whole new table: an embedding lookup takes a listed token's row from the adapter, an output
   * layer takes a listed token's logit from x·rowᵀ. Bit for bit the lookup of the replaced table.
   */
  private forwardWith(x: tf.Tensor, names: string[]): tf.Tensor {
    const own = names.filter((n) => this.tokenIndices.has(n));
    if (own.length === 0) return this.baseLayer.call(x) as tf.Tensor;
    const indices = own.flatMap((n) => this.tokenIndices.get(n) as number[]);
    const rows =
      own.length === 1
        ? this.trainableTokensDelta.get(own[0] as string)
        : tf.concat(
            own.map((n) => this.trainableTokensDelta.get(n)),
            0,
          );
    const n = indices.length;
    const base = this.baseLayer;
    if (base instanceof Embedding) {
      const dim = base.embeddingDim;
      const looked = embedding(x, base.weight);
      const keep = tf.tensor2d(
        indices.map((v, j) => (indices.indexOf(v, j + 1) === -1 ? 1 : 0)),
        [1, n],
      );
      const hit = tf.mul(
        tf.cast(tf.equal(tf.reshape(x, [-1, 1]), tf.tensor2d(indices, [1, n], 'int32')), 'float32'),
        keep,
      ); // [tokens, n]
      const replaced = tf.sub(1, tf.sum(hit, 1, true));
      return tf.reshape(tf.add(tf.mul(tf.reshape(looked, [-1, dim]), replaced), tf.matMul(hit, rows)), looked.shape);
    }
    // An output layer over the vocabulary (an lm_head tied to the embedding): the rows are output units.
    const sel = selection(indices, this.numRows); // [n, vocab]
    const inF = base.inFeatures;
    const x2 = tf.reshape(x, [-1, inF]);
    const logits = linear(x2, base.weight);
    const fresh = tf.matMul(tf.matMul(x2, tf.transpose(rows)), sel);
    let y = tf.add(tf.mul(logits, tf.sub(1, tf.sum(sel, 0, true))), fresh);
    // PEFT's F.linear(x, W) leaves out the bias; tied output layers have none, and keeping it is the correct output
    if (base.bias) y = tf.add(y, base.bias);
    return tf.reshape(y, [...x.shape.slice(0, -1), this.numRows]);
  }

  forward(x: tf.Tensor): tf.Tensor {
    const names = this.batchAdapterNames;
    if (this.disableAdapters || (this.activeAdapters.length === 0 && !names)) {
      if (this.mergedAdapters.length) this.unmerge();
      return this.baseLayer.call(x) as tf.Tensor;
    }
    if (names) {
      if (names.length !== x.shape[0])
        throw new Error(
          `Length of \`adapter_names\` should be the same as the number of inputs, but got ${names.length} and ${x.shape[0]} respectively.`,
        );
      if (this.mergedAdapters.length)
        throw new Error(
          'Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first.',
        );
      return tf.tidy(() => {
        let out: tf.Tensor | null = null;
        for (const name of new Set(names)) {
          const y = this.forwardWith(x, name === '__base__' ? [] : [name]);
          const rows = tf.tensor(
            names.map((n) => (n === name ? 1 : 0)),
            [names.length, ...new Array(y.rank - 1).fill(1)],
          );
          out = out ? tf.add(out, tf.mul(y, rows)) : tf.mul(y, rows);
        }
        return out as tf.Tensor;
      });
    }
    if (this.mergedAdapters.length) return this.baseLayer.call(x) as tf.Tensor;
    this.checkOverlappingTokens(this.activeAdapters);
    return tf.tidy(() => this.forwardWith(x, this.activeAdapters));
  }
}

/**
 * PEFT's `TrainableTokensWrapper`, which takes the wrapped layer's place in the model: its
 * `token_adapter` is the {@link TrainableTokensLayer}, so parameter paths read as PEFT's
 * (`embed_tokens.token_adapter.trainable_tokens_delta.<adapter>`, saved without the adapter name).
 *
 * @example
 * ```ts
 * const peft = getPeftModel(model, { targetModules: ['q_proj'], trainableTokenIndices: [32000, 32001] });
 * peft.model.getSubmodule('model.embed_tokens'); // a TrainableTokensWrapper
 * ```
 */
export class TrainableTokensWrapper extends Module {
  tokenAdapter: TrainableTokensLayer;

  constructor(base: Embedding | Linear, tiedAdapter: TrainableTokensLayer | null = null) {
    super();
    this.tokenAdapter = this.registerModule('token_adapter', new TrainableTokensLayer(base, tiedAdapter));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return this.tokenAdapter.call(x) as tf.Tensor;
  }
}

const quoted = (names: string[]) => `{${names.map((n) => `'${n}'`).join(', ')}}`;

/**
 * Wraps every module whose path ends with one of `names` (PEFT's `_set_trainable` with
 * `strict_module_check`) or adds the adapter to a wrapper already there.
 */
function wrapMatching(
  model: Module,
  adapterName: string,
  names: string[],
  indices: number[],
  tiedAdapter: TrainableTokensLayer | null,
  hint: string,
): void {
  let found = false;
  for (const [path, m] of [...model.namedModules()]) {
    if (path === '' || !names.some((k) => path.endsWith(k))) continue;
    if (m instanceof TrainableTokensWrapper) {
      // a layer already wrapped keeps its own rows; tying does not change it (as PEFT)
      if (!tiedAdapter) m.tokenAdapter.updateLayer(adapterName, indices);
    } else if (m instanceof Embedding || m instanceof Linear) {
      const wrapper = new TrainableTokensWrapper(m, tiedAdapter);
      wrapper.tokenAdapter.updateLayer(adapterName, indices);
      model.setSubmodule(path, wrapper);
    } else if ('baseLayer' in m || 'originalModule' in m) {
      throw new LoraConfigError(
        `trainable_token_indices cannot be applied to modules of type ${m.constructor.name} ('${path}'); a module is either a LoRA target, in modules_to_save, or has trainable tokens`,
      );
    } else {
      throw new LoraConfigError(
        `TrainableTokensLayer wraps an unknown layer type, maybe you are targeting the wrong layer? ('${path}' is a ${m.constructor.name}; trainable tokens need an Embedding or a Linear over the vocabulary)`,
      );
    }
    found = true;
  }
  if (!found)
    throw new TargetModuleError(
      `Target modules ${quoted(names)} not found in the base model. Please check the target modules and try again.${hint}`,
    );
}

const sameIndices = (a: number[] | undefined, b: number[] | undefined) => JSON.stringify(a) === JSON.stringify(b);

/**
 * Adds an adapter's trainable tokens to `model` (the user's model inside a PeftModel), as PEFT's
 * `set_additional_trainable_modules` does for `trainable_token_indices`:
 * - a list trains those rows of the input embedding (found by the rule of `model-embeddings.ts`:
 *   `getInputEmbeddings()`, else the module named `embed_tokens`);
 * - a record maps module names (suffixes of paths) to their rows;
 * - output layers tied to the input embedding (sharing its weight) follow its rows, unless a record
 *   gives them other rows (then they train their own; PEFT's `ensure_weight_tying: true`, kept in
 *   `config.extra`, makes that an error).
 * New wrappers start inactive; the caller activates the adapter.
 */
export function addTrainableTokens(
  model: Module,
  adapterName: string,
  config: LoraConfig,
  warn: (message: string) => void = console.warn,
): void {
  const tti = config.trainableTokenIndices;
  if (tti === null || tti === undefined) return;
  let targets: Record<string, number[]>;
  let hint = '';
  if (Array.isArray(tti)) {
    const key =
      typeof (model as { getInputEmbeddings?: unknown }).getInputEmbeddings === 'function'
        ? inputEmbeddingsPath(model)
        : null;
    targets = { [key ?? 'embed_tokens']: tti };
    hint =
      ' A list of trainable_token_indices trains the input embedding: the module returned by the model\'s getInputEmbeddings() method, else the module named embed_tokens. Add that method, or name the module: trainableTokenIndices: { "<module path>": [...] }.';
  } else {
    targets = tti;
  }
  for (const key of Object.keys(targets)) {
    if (config.modulesToSave?.includes(key)) {
      throw new LoraConfigError(
        `The embedding layer is already marked to be trained fully, either specify \`modules_to_save=[..., "${key}", ...]\` or \`trainable_tokens={'${key}': x}\` but not both.`,
      );
    }
  }
  const embeddingPath = inputEmbeddingsPath(model);
  const tied = embeddingPath === null ? [] : tiedModulePaths(model, embeddingPath);
  const ensureTying = config.extra.ensure_weight_tying === true;
  const keys = Object.keys(targets);
  let mismatch = false;
  let skip = new Set<string>();
  if (keys.length > 1 && tied.length > 0 && embeddingPath !== null) {
    const tiedKeys = keys.filter(
      (k) => embeddingPath.endsWith(k) || tied.some((t) => t.endsWith(k) || t.split('.').includes(k)),
    );
    if (tiedKeys.length >= 2) {
      const first = targets[tiedKeys[0] as string];
      mismatch = !tiedKeys.slice(1).every((k) => sameIndices(targets[k], first));
      if (mismatch && ensureTying) {
        throw new LoraConfigError(
          `Cannot ensure weight tying when different token indices are specified for tied layers. Conflicting layers: ${tiedKeys.map((k) => `${k}: [${(targets[k] ?? []).join(', ')}]`).join(', ')}. Please use the same indices for all tied layers or set ensure_weight_tying=False.`,
        );
      }
      if (!mismatch) skip = new Set(tiedKeys.filter((k) => tied.includes(k)));
    }
  }
  for (const [key, indices] of Object.entries(targets))
    if (!skip.has(key)) wrapMatching(model, adapterName, [key], indices, null, hint);
  if (tied.length === 0 && ensureTying) {
    warn(
      'ensure_weight_tying=True but the model does not have tied weights (tie_word_embeddings=False). Weight tying will not be applied for trainable_token_indices.',
    );
  }
  const embedding = embeddingPath === null ? null : model.getSubmodule(embeddingPath);
  if (tied.length > 0 && embedding instanceof TrainableTokensWrapper && (ensureTying || !mismatch)) {
    const owner = embedding.tokenAdapter;
    const indices = owner.tokenIndices.get(adapterName);
    if (indices) wrapMatching(model, adapterName, tied, indices, owner, '');
  }
}
