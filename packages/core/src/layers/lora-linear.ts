import * as tf from '@tensorflow/tfjs-core';
import {
  Linear,
  ModuleDict,
  TransposedLinear,
  defaultRng,
  kaimingUniformDefault,
  linear,
  normalInit,
  transposedLinear,
} from '@lora/nn';
import { addScaled } from '@lora/kernels';
import { type Matrix64, matrix64, qr, svd, svdLowRank, transpose64 } from '@lora/linalg';
import { Magnitude, normExcept } from '../variants/dora';
import { lookupLoraInit } from '../inits/init-registry';
import { LoraLayerBase, loraDropoutModule } from './lora-layer';
import { loraScaling } from '../lora-config';

/** Per-adapter settings of a LoRA layer. */
export interface AdapterSettings {
  r: number;
  loraAlpha: number;
  loraDropout: number;
  useRslora: boolean;
  initLoraWeights: boolean | string;
  loraBias: boolean;
  /**
   * The base weight is stored `[in, out]` (PEFT's `fan_in_fan_out`): true exactly when the base layer is
   * a `TransposedLinear` (transformers' `Conv1D`). `PeftModel` sets it as PEFT does, with PEFT's warning
   * when the config says otherwise.
   */
  fanInFanOut: boolean;
  /** Weight-decomposed LoRA: a trained magnitude per output unit (PEFT's `use_dora`). */
  useDora?: boolean;
  /** The layer's path in the user's model (set by `PeftModel`; what a registered init such as EVA looks statistics up by). */
  path?: string;
}

/**
 * DoRA's weight norm ([out]): the L2 norm of each output unit's weights in W + ΔW, where `sum` is
 * W + ΔW in the base weight's layout: rows of `[out, in]`, or columns of a fan_in_fan_out `[in, out]`.
 */
function outputNorms(sum: tf.Tensor, fanInFanOut: boolean): tf.Tensor {
  return tf.tidy(() => tf.reshape(normExcept(sum, fanInFanOut ? 1 : 0), [-1]));
}

/**
 * A Linear wrapped with LoRA adapters, as PEFT's `lora.Linear`: the original layer as `base_layer`,
 * per-adapter `lora_A` ([r, in]) and `lora_B` ([out, r]) Linears and `lora_dropout`, and
 * `y = base(x) + Σ_active s·B(A(dropout(x)))` with `s = α/r` (or `α/√r` with rsLoRA).
 * The base may also be a {@link TransposedLinear} (transformers' `Conv1D`, weight `[in, out]`): PEFT's
 * `fan_in_fan_out`, where A and B keep their layouts and ΔW is transposed into the base's.
 *
 * @example
 * ```ts
 * const layer = new LoraLinear(new Linear(64, 64), 'default', { r: 8, loraAlpha: 16, loraDropout: 0, useRslora: false, initLoraWeights: true, loraBias: false, fanInFanOut: false });
 * ```
 */
export class LoraLinear extends LoraLayerBase<Linear | TransposedLinear> {
  baseLayer: Linear | TransposedLinear;
  loraA: ModuleDict<Linear>;
  loraB: ModuleDict<Linear>;
  loraDropout: ModuleDict;
  loraMagnitudeVector: ModuleDict<Magnitude>;
  /** The base weight's data that the `dora_base_norm_sq` buffer (‖W‖² per output unit) was computed from. */
  private baseNormSource: object | null = null;

  constructor(base: Linear | TransposedLinear, adapterName: string, settings: AdapterSettings) {
    super();
    this.baseLayer = this.registerModule('base_layer', base);
    this.loraA = this.registerModule('lora_A', new ModuleDict<Linear>());
    this.loraB = this.registerModule('lora_B', new ModuleDict<Linear>());
    this.loraDropout = this.registerModule('lora_dropout', new ModuleDict());
    this.loraMagnitudeVector = this.registerModule('lora_magnitude_vector', new ModuleDict<Magnitude>());
    // DoRA's cached ‖W‖² (not state: it is rebuilt from the weight whenever that changes)
    this.registerBuffer('dora_base_norm_sq', null, false);
    this.updateLayer(adapterName, settings);
    this.activeAdapters = [adapterName];
  }

  get inFeatures(): number {
    return this.baseLayer.inFeatures;
  }

  get outFeatures(): number {
    return this.baseLayer.outFeatures;
  }

  /** The base weight is `[in, out]` (a TransposedLinear, transformers' Conv1D): PEFT's `fan_in_fan_out`. */
  get fanInFanOut(): boolean {
    return this.baseLayer instanceof TransposedLinear;
  }

  /**
   * Adds (or replaces) an adapter. Construction draws A, then B, with PyTorch's default Linear
   * initialisation, then re-initialises as `initLoraWeights` says, in PEFT's order: after the same
   * `manualSeed`, A equals PEFT's.
   */
  updateLayer(name: string, s: AdapterSettings): void {
    if (!Number.isInteger(s.r) || s.r <= 0)
      throw new Error(`\`r\` should be a positive integer value but the value passed is ${s.r}`);
    if (s.useDora && s.loraBias)
      throw new Error('The argument lora_bias=True is not supported for DoRA, please pass use_dora=False');
    if (s.fanInFanOut !== this.fanInFanOut) {
      throw new Error(
        `fanInFanOut is ${s.fanInFanOut} but the base layer is a ${this.baseLayer.constructor.name}, whose weight is stored ${this.fanInFanOut ? '[in, out]' : '[out, in]'}; ` +
          `set fanInFanOut to ${this.fanInFanOut} (getPeftModel corrects it with PEFT's warning)`,
      );
    }
    if (this.settings.has(name)) this.deleteAdapter(name);
    const a = new Linear(this.inFeatures, s.r, { bias: false });
    const b = new Linear(s.r, this.outFeatures, { bias: s.loraBias });
    const init = s.initLoraWeights;
    if (init === true || init === 'gaussian') {
      // A: kaiming-uniform (default) or N(0, 1/r) (gaussian); B (and its bias): zeros, so the adapter starts as a no-op
      if (init === 'gaussian') a.setParameter('weight', normalInit([s.r, this.inFeatures], 1 / s.r));
      else if (init === true) a.setParameter('weight', kaimingUniformDefault([s.r, this.inFeatures], this.inFeatures));
      b.setParameter('weight', tf.zeros([this.outFeatures, s.r]));
      if (b.bias) b.setParameter('bias', tf.zeros([this.outFeatures]));
    } else if (init === 'orthogonal') {
      if (s.r % 2 !== 0) {
        a.dispose();
        b.dispose();
        throw new Error(`Orthogonal initialization requires the LoRA rank to be even, got ${s.r} instead.`);
      }
      // PEFT: Q from the QR of an r×r Gaussian; A from its even-indexed rows, B from its odd ones, so
      // that B·A = 0 while both are non-zero. Draws in PEFT's order (X, then A's, then B's Gaussian).
      const g = defaultRng();
      const q = qr(matrix64(s.r, s.r, Float64Array.from(g.fillNormal(new Float32Array(s.r * s.r))))).Q;
      const half = s.r / 2;
      const ga = g.fillNormal(new Float32Array(this.inFeatures * half)); // [in, r/2]
      const gb = g.fillNormal(new Float32Array(half * this.outFeatures)); // [r/2, out]
      const aData = new Float32Array(s.r * this.inFeatures);
      const bData = new Float32Array(this.outFeatures * s.r);
      for (let j = 0; j < s.r; j++)
        for (let i = 0; i < this.inFeatures; i++) {
          let v = 0; // (ga · q_odd)[i, j], q_odd = rows 0, 2, 4… of Q
          for (let k = 0; k < half; k++) v += (ga[i * half + k] as number) * (q.data[2 * k * s.r + j] as number);
          aData[j * this.inFeatures + i] = v / 10;
        }
      for (let o = 0; o < this.outFeatures; o++)
        for (let j = 0; j < s.r; j++) {
          let v = 0; // (gbᵀ · q_even)[o, j], q_even = rows 1, 3, 5… of Q
          for (let k = 0; k < half; k++)
            v += (gb[k * this.outFeatures + o] as number) * (q.data[(2 * k + 1) * s.r + j] as number);
          bData[o * s.r + j] = v / 10;
        }
      a.setParameter('weight', tf.tensor2d(aData, [s.r, this.inFeatures]));
      b.setParameter('weight', tf.tensor2d(bData, [this.outFeatures, s.r]));
    } else if (typeof init === 'string' && (init.startsWith('pissa') || init.toLowerCase() === 'olora')) {
      try {
        this.decompositionInit(init, s, a, b);
      } catch (e) {
        a.dispose();
        b.dispose();
        throw e;
      }
    } else if (init === 'loftq' || init === 'eva' || init === 'lora_ga') {
      // pluggable: the method package registered an initialiser (or this names the package to install)
      let registered: ReturnType<typeof lookupLoraInit>;
      try {
        registered = lookupLoraInit(init);
      } catch (e) {
        a.dispose();
        b.dispose();
        throw e;
      }
      registered({
        path: s.path ?? '',
        adapterName: name,
        settings: s,
        baseWeight: this.baseLayer.weight,
        loraA: a.weight,
        loraB: b.weight,
        scaling: loraScaling(s.loraAlpha, s.r, s.useRslora),
      });
    } else if (init !== false) {
      a.dispose();
      b.dispose();
      throw new Error(
        `init_lora_weights='${String(init)}' is not available in @lora/core yet for Linear layers; use true, false, 'gaussian', 'pissa', 'pissa_niter_K', 'olora' or 'orthogonal'`,
      );
    }
    this.loraA.set(name, a);
    this.loraB.set(name, b);
    this.loraDropout.set(name, loraDropoutModule(s.loraDropout));
    this.storeSettings(name, s);
    if (s.useDora) {
      // m starts as the output units' norms of W + s·B·A, so DoRA is a no-op at init when B = 0
      const m = tf.tidy(() => outputNorms(tf.add(this.baseLayer.weight, this.getDeltaWeight(name)), s.fanInFanOut));
      this.loraMagnitudeVector.set(name, new Magnitude(m));
      this.baseNormSquared(); // held from here on, so that forward passes allocate nothing that outlives them
    }
  }

  /**
   * PiSSA (`'pissa'`: full SVD; `'pissa_niter_K'`: randomized SVD with K subspace iterations) and
   * OLoRA (QR), as PEFT: A and B from the top-r part of W, and W ← W − s·B·A so that the model is
   * unchanged at init. PiSSA on a fan_in_fan_out base decomposes Wᵀ, as PEFT. Reads the weight
   * synchronously (a CPU-side backend, or webgpu in a browser).
   */
  private decompositionInit(init: string, s: AdapterSettings, a: Linear, b: Linear): void {
    const fifo = this.fanInFanOut;
    if (fifo && init.toLowerCase() === 'olora') {
      // PEFT 0.21's olora_init factors the stored [in, out] weight as it is (pissa_init transposes it
      // first): lora_A gets the shape [r, out], the forward pass fails unless in = out, and then the
      // model is not preserved at init. Nothing to match, so refuse.
      throw new Error(
        `init_lora_weights='olora' does not work on a fan_in_fan_out layer (${this.baseLayer.constructor.name}, weight [${this.baseLayer.weight.shape.join(', ')}] stored [in, out]): ` +
          "PEFT 0.21 factors the weight without transposing it and builds lora_A of the wrong shape. Use 'pissa' (which PEFT transposes) or another initialisation",
      );
    }
    const w = this.baseLayer.weight;
    const [out, inF] = (fifo ? [...w.shape].reverse() : w.shape) as [number, number];
    const scale = loraScaling(s.loraAlpha, s.r, s.useRslora);
    let values: Float32Array;
    try {
      values = w.dataSync() as Float32Array;
    } catch (e) {
      throw new Error(
        `init_lora_weights='${init}' reads the base weight synchronously, which this backend (${tf.getBackend()}) cannot do (${(e as Error).message}); build the LoRA model on the cpu or wasm backend, then switch`,
      );
    }
    // W as [out, in]: a fan_in_fan_out weight is read transposed
    const stored = fifo ? matrix64(inF, out, Float64Array.from(values)) : matrix64(out, inF, Float64Array.from(values));
    const m = fifo ? transpose64(stored) : stored;
    const r = s.r;
    const bData = new Float64Array(out * r);
    const aData = new Float64Array(r * inF);
    if (init.toLowerCase() === 'olora') {
      // W = Q·R; B = Q[:, :r], A = R[:r] (no rescaling by s, as PEFT)
      const { Q, R } = qr(m);
      for (let i = 0; i < out; i++) for (let j = 0; j < r; j++) bData[i * r + j] = Q.data[i * Q.cols + j] ?? 0;
      for (let j = 0; j < r; j++)
        for (let c = 0; c < inF; c++) aData[j * inF + c] = j < R.rows ? (R.data[j * inF + c] as number) : 0;
    } else {
      const parts = init.split('_niter_');
      let U: Matrix64;
      let S: Float64Array;
      let Vh: Matrix64;
      if (init === 'pissa') ({ U, S, Vh } = svd(m));
      else {
        const niter = Number(parts[1]);
        if (parts.length !== 2 || !Number.isInteger(niter) || niter < 0)
          throw new Error(
            `init_lora_weights should be 'pissa' or 'pissa_niter_[number of iters]', got ${init} instead.`,
          );
        const low = svdLowRank(m, { q: r, niter, seed: defaultRng().nextUint32(), sketchDtype: 'float32' });
        U = low.U;
        S = low.S;
        Vh = transpose64(low.V);
      }
      // A = diag(√(S/s))·Vh[:r], B = U[:, :r]·diag(√(S/s))
      for (let j = 0; j < Math.min(r, S.length); j++) {
        const root = Math.sqrt((S[j] as number) / scale);
        for (let i = 0; i < out; i++) bData[i * r + j] = (U.data[i * U.cols + j] as number) * root;
        for (let c = 0; c < inF; c++) aData[j * inF + c] = (Vh.data[j * Vh.cols + c] as number) * root;
      }
    }
    a.setParameter('weight', tf.tensor2d(Float32Array.from(aData), [r, inF]));
    b.setParameter('weight', tf.tensor2d(Float32Array.from(bData), [out, r]));
    if (b.bias) b.setParameter('bias', tf.zeros([out]));
    tf.tidy(() => {
      const ba = tf.mul(tf.matMul(b.weight, a.weight), scale);
      w.assign(tf.sub(w, fifo ? tf.transpose(ba) : ba));
    });
  }

  protected removeAdapterWeights(name: string): void {
    this.loraA.delete(name)?.dispose();
    this.loraB.delete(name)?.dispose();
    this.loraDropout.delete(name);
    this.loraMagnitudeVector.delete(name)?.dispose();
    if (![...this.settings].some(([n, s]) => n !== name && s.useDora)) this.setBuffer('dora_base_norm_sq', null);
  }

  /** ‖W‖² per output unit, recomputed when the base weight's data changed since it was cached. */
  private baseNormSquared(): tf.Tensor {
    const w = this.baseLayer.weight;
    const cached = this.getBuffer('dora_base_norm_sq');
    if (cached && this.baseNormSource === w.dataId) return cached;
    const fifo = this.fanInFanOut;
    this.setBuffer(
      'dora_base_norm_sq',
      tf.tidy(() => tf.sum(tf.square(w), fifo ? 0 : 1)),
    );
    this.baseNormSource = w.dataId;
    return this.getBuffer('dora_base_norm_sq') as tf.Tensor;
  }

  /**
   * DoRA's weight norm ‖W + s·B·A‖ per output unit ([out]) without building the [out, in] matrices:
   * ‖Wᵢ‖² + 2s·(W·Aᵀ)ᵢ·Bᵢ + s²·(B·A·Aᵀ)ᵢ·Bᵢ, with ‖Wᵢ‖² cached while the base weight stays the same
   * tensor (a merge, an unmerge or any assign gives the variable new data, which drops the cache).
   * Equal to the direct norm to float32 rounding relative to ‖W‖ (PEFT's fixtures hold at 1e-5).
   */
  private doraNormFactored(name: string): tf.Tensor {
    const w = this.baseLayer.weight;
    const fifo = this.fanInFanOut;
    const a = this.loraA.get(name).weight; // [r, in]
    const b = this.loraB.get(name).weight; // [out, r]
    const s = this.scaling.get(name) as number;
    // computed inside a custom gradient of zeros, so that none of it is recorded for backprop (the norm is detached)
    const norm = tf.customGrad(((wt: tf.Tensor, sq: tf.Tensor, at: tf.Tensor, bt: tf.Tensor) => {
      const wa = fifo ? tf.matMul(wt, at, true, true) : tf.matMul(wt, at, false, true); // W·Aᵀ, [out, r]
      const cross = tf.sum(tf.mul(wa, bt), 1);
      const quad = tf.sum(tf.mul(tf.matMul(bt, tf.matMul(at, at, false, true)), bt), 1);
      const value = tf.sqrt(tf.relu(tf.add(sq, tf.add(tf.mul(cross, 2 * s), tf.mul(quad, s * s)))));
      return { value, gradFunc: () => [wt, sq, at, bt].map((t) => tf.zerosLike(t)) };
    }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...t: tf.Tensor[]) => tf.Tensor;
    return norm(w, this.baseNormSquared(), a, b);
  }

  protected addAdapterOutput(result: tf.Tensor, x: tf.Tensor, name: string, rows: tf.Tensor | null): tf.Tensor {
    const settings = this.settings.get(name) as AdapterSettings;
    const scale = this.scaling.get(name) as number;
    const dropped = this.loraDropout.get(name).call(x) as tf.Tensor;
    const lora = this.loraB.get(name).call(this.loraA.get(name).call(dropped)) as tf.Tensor;
    if (!settings.useDora) {
      // result + s·lora: one dispatch on webgpu (@lora/kernels), tf.add(result, tf.mul(lora, s)) elsewhere
      if (!rows) return addScaled(result, lora, scale);
      return tf.add(result, tf.mul(tf.mul(lora, scale), rows));
    }
    // DoRA (PEFT's DoraLinearLayer): f = m / ‖W + s·B·A‖ (the norm detached); the running result
    // minus the bias stands for the base output unless dropout is active in training.
    const w = this.baseLayer.weight;
    const norm = this.doraNormFactored(name);
    const f = tf.div(this.loraMagnitudeVector.get(name).weight, norm);
    const noDropout = settings.loraDropout === 0 || !this.training;
    const base = noDropout
      ? this.baseLayer.bias
        ? tf.sub(result, this.baseLayer.bias)
        : result
      : settings.fanInFanOut
        ? transposedLinear(dropped, w)
        : linear(dropped, w);
    return tf.add(result, tf.add(tf.mul(tf.sub(f, 1), base), tf.mul(tf.mul(f, lora), scale)));
  }

  /**
   * ΔW = s·B·A in the base weight's layout (transposed for fan_in_fan_out), PEFT's `get_delta_weight`.
   * The caller owns the tensor.
   */
  getDeltaWeight(name: string): tf.Tensor2D {
    const s = this.settings.get(name);
    if (!s) throw new Error(`adapter '${name}' is not on this layer; it has ${[...this.settings.keys()].join(', ')}`);
    return tf.tidy(() => {
      const ba = tf.mul(
        tf.matMul(this.loraB.get(name).weight, this.loraA.get(name).weight),
        this.scaling.get(name) as number,
      );
      return (s.fanInFanOut ? tf.transpose(ba) : ba) as tf.Tensor2D;
    });
  }

  /** A of an adapter ([r, in]). */
  factorA(name: string): tf.Variable {
    return this.loraA.get(name).weight;
  }

  /** B of an adapter ([out, r]). */
  factorB(name: string): tf.Variable {
    return this.loraB.get(name).weight;
  }

  /** The adapter's tensors by the key suffix PEFT saves them under (DoRA's magnitude without `.weight`). */
  savedTensors(name: string): Record<string, tf.Variable> {
    const out: Record<string, tf.Variable> = {
      'lora_A.weight': this.loraA.get(name).weight,
      'lora_B.weight': this.loraB.get(name).weight,
    };
    const bias = this.loraB.get(name).bias;
    if (bias) out['lora_B.bias'] = bias;
    if (this.loraMagnitudeVector.has(name)) out.lora_magnitude_vector = this.loraMagnitudeVector.get(name).weight;
    return out;
  }

  protected override loraBias(name: string): tf.Tensor | null {
    return this.loraB.get(name).bias;
  }

  /** DoRA's norm per output unit, shaped to scale W in its layout (rows, or columns with fan_in_fan_out). */
  protected override doraWeightNorm(_name: string, weight: tf.Tensor): tf.Tensor {
    return normExcept(weight, this.fanInFanOut ? 1 : 0);
  }

  protected override doraMagnitude(name: string): tf.Tensor {
    const m = this.loraMagnitudeVector.get(name).weight;
    return tf.expandDims(m, this.fanInFanOut ? 0 : 1);
  }
}
