/**
 * Arrow's routed forward on one layer (PEFT's `ArrowLoraLinearLayer.forward`) with work proportional
 * to top_k: each token goes through its k experts only. PEFT computes every expert for every token
 * and builds a tokens × experts × out tensor before weighting it; the sums are the same.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gatheredLowRank, topkSoftmax } from '@lora/kernels';
import { matmulTransposeB } from '@lora/nn';

/** Each token's experts and their coefficients: `[T, k]` each. */
export interface Routing {
  /** int32: the k experts with the largest |token · prototype|, largest first. */
  indices: tf.Tensor2D;
  /** softmax of those similarities / temperature (PEFT's softmax over all experts with −∞ outside the top k). */
  coefficients: tf.Tensor2D;
}

/**
 * The routing of tokens `[T, in]` over prototypes `[E, in]`: similarity |x·p| (the prototypes are unit
 * vectors, the tokens are not normalised: PEFT's "cosine" is this dot product), the k largest per
 * token, and a softmax over them at `temperature`. A softmax over all E with −∞ outside the top k,
 * as PEFT writes it, has the same values.
 */
export function route(tokens: tf.Tensor2D, prototypes: tf.Tensor2D, topK: number, temperature: number): Routing {
  return tf.tidy(() => {
    const similarity = () => tf.abs(matmulTransposeB(tokens, prototypes));
    // |x·p|, its top k and their softmax: two dispatches on webgpu (tfjs's TopK takes about log²E)
    if (!taping())
      return topkSoftmax(matmulTransposeB(tokens, prototypes) as tf.Tensor2D, topK, { temperature, absolute: true });
    // Inside a gradient tape: tfjs has no gradient for TopK, and gathers by taped indices fail (their
    // "gradient" is int32). PyTorch differentiates the top-k values only, so: the indices from an
    // untaped computation, the values picked from the taped similarities with a one-hot.
    const indices = untapedTopK(tokens, prototypes, topK);
    const picked = tf.sum(tf.mul(tf.expandDims(similarity(), 1), tf.oneHot(indices, prototypes.shape[0])), 2);
    return { indices, coefficients: tf.softmax(tf.div(picked, temperature)) as tf.Tensor2D };
  });
}

/**
 * The top-k indices of |tokens·Pᵀ|, computed where the gradient tape does not record: inside a custom
 * gradient whose only input is the prototypes (constant), the tokens captured. The indices are then
 * constants to the tape, as integer indices are to PyTorch's autograd.
 */
function untapedTopK(tokens: tf.Tensor2D, prototypes: tf.Tensor2D, topK: number): tf.Tensor2D {
  const f = (p: tf.Tensor) => ({
    value: tf.topk(tf.abs(matmulTransposeB(tokens, p)), topK, true).indices,
    gradFunc: () => tf.zerosLike(p),
  });
  const op = tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(prototypes) as tf.Tensor2D;
}

/** One task expert on the layer: its factors and its own scaling. */
export interface Expert {
  a: tf.Tensor; // [r, in]
  b: tf.Tensor; // [out, r]
  scale: number;
  /** Aᵀ ([in, r]) and Bᵀ ([r, out]), when the caller keeps them (asked for only when the expert is used): the products then need no transpose. */
  transposed?: () => { a: tf.Tensor; b: tf.Tensor };
}

/** Whether a gradient tape is recording. */
function taping(): boolean {
  return ((tf.engine().state as unknown as { gradientDepth?: number }).gradientDepth ?? 0) > 0;
}

/**
 * Σ_j coeff[t, j] · s_e · B_e·(A_e·x[t]) over each token's experts e, for backends whose data a forward
 * may read synchronously (cpu, wasm, tensorflow): the k·T (token, expert) pairs are grouped by expert
 * from the indices read back, and each expert runs its two products over its own tokens only, nothing
 * of size E × T. The rows are gathered and the products' rows added back per token in JavaScript:
 * measured on wasm, tfjs's GatherV2 takes ~200 ns a value (a [1536, 352] gather 114 ms), a copy ~1 ns.
 * Sums are float64 until the result is written.
 */
export function groupedDelta(tokens: tf.Tensor2D, routing: Routing, experts: Expert[]): tf.Tensor2D {
  const [t, k] = routing.indices.shape;
  const inF = tokens.shape[1];
  const outF = (experts[0] as Expert).b.shape[0] as number;
  if (taping()) return denseDelta(tokens, routing, experts);
  const idx = routing.indices.dataSync();
  const coeff = routing.coefficients.dataSync();
  const x = tokens.dataSync() as Float32Array;
  const byExpert: number[][] = experts.map(() => []);
  for (let p = 0; p < idx.length; p++) byExpert[idx[p] as number]?.push(p);
  const acc = new Float64Array(t * outF);
  experts.forEach((e, i) => {
    const slots = byExpert[i] as number[];
    if (slots.length === 0) return;
    const rows = new Float32Array(slots.length * inF);
    slots.forEach((p, j) => {
      const row = Math.floor(p / k) * inF;
      rows.set(x.subarray(row, row + inF), j * inF);
    });
    // x·Aᵀ·Bᵀ (with kept transposes, or explicit ones where matMul's flags are slow: wasm)
    const kept = e.transposed?.();
    const y = tf.tidy(() => {
      const xs = tf.tensor2d(rows, [slots.length, inF]);
      return kept ? tf.matMul(tf.matMul(xs, kept.a), kept.b) : matmulTransposeB(matmulTransposeB(xs, e.a), e.b);
    });
    const yv = y.dataSync();
    y.dispose();
    slots.forEach((p, j) => {
      const w = (coeff[p] as number) * e.scale;
      const to = Math.floor(p / k) * outF;
      for (let o = 0; o < outF; o++) acc[to + o] = (acc[to + o] as number) + w * (yv[j * outF + o] as number);
    });
  });
  return tf.tensor2d(Float32Array.from(acc), [t, outF]);
}

/**
 * The same sum inside a gradient tape, with products and elementwise ops only (gather's gradient
 * needs UnsortedSegmentSum, which wasm lacks): every expert's A-projection, weighted by its
 * coefficient (zero outside the token's top k), then every B. Linear in E, like PEFT's, but never
 * a tokens × experts × out tensor: only [T, E·r].
 */
function denseDelta(tokens: tf.Tensor2D, routing: Routing, experts: Expert[]): tf.Tensor2D {
  const [t, k] = routing.indices.shape;
  const e = experts.length;
  const r = (experts[0] as Expert).a.shape[0] as number;
  return tf.tidy(() => {
    // coefficients spread over all experts: Σ_j onehot(idx[t, j]) · coeff[t, j] → [T, E]
    const dense = tf.sum(tf.mul(tf.oneHot(routing.indices, e), tf.reshape(routing.coefficients, [t, k, 1])), 1);
    const scales = tf.tensor1d(experts.map((x) => x.scale));
    const aCat = tf.concat(
      experts.map((x) => x.a),
      0,
    ); // [E·r, in]
    const bCat = tf.concat(
      experts.map((x) => x.b),
      1,
    ); // [out, E·r]
    const z = tf.reshape(matmulTransposeB(tokens, aCat), [t, e, r]);
    const weighted = tf.reshape(tf.mul(z, tf.reshape(tf.mul(dense, scales), [t, e, 1])), [t, e * r]);
    return matmulTransposeB(weighted, bCat) as tf.Tensor2D;
  });
}

/**
 * The same sum with the gathered kernel of `@lora/kernels` (webgpu: two dispatches reading the chosen
 * experts' rows of the stacked factors, no read back), the experts' scalings folded into the
 * coefficients.
 */
export function gatheredDelta(
  tokens: tf.Tensor2D,
  routing: Routing,
  stacked: { a: tf.Tensor3D; b: tf.Tensor3D },
  scales: number[],
): tf.Tensor2D {
  return tf.tidy(() => {
    const weights = tf.mul(routing.coefficients, tf.gather(tf.tensor1d(scales), routing.indices)) as tf.Tensor2D;
    return gatheredLowRank(tokens, stacked.a, stacked.b, routing.indices, weights);
  });
}
