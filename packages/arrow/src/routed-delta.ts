/**
 * Arrow's routed forward on one layer (PEFT's `ArrowLoraLinearLayer.forward`) with work proportional
 * to top_k: each token goes through its k experts only. PEFT computes every expert for every token
 * and builds a tokens × experts × out tensor before weighting it; the sums are the same.
 */
import * as tf from '@tensorflow/tfjs-core';
import { gatheredLowRank } from '@lora/kernels';

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
    const similarity = () => tf.abs(tf.matMul(tokens, prototypes, false, true));
    if (!taping()) {
      const { values, indices } = tf.topk(similarity(), topK, true);
      return { indices: indices as tf.Tensor2D, coefficients: tf.softmax(tf.div(values, temperature)) as tf.Tensor2D };
    }
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
    value: tf.topk(tf.abs(tf.matMul(tokens, p, false, true)), topK, true).indices,
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
}

/** Whether a gradient tape is recording. */
function taping(): boolean {
  return ((tf.engine().state as unknown as { gradientDepth?: number }).gradientDepth ?? 0) > 0;
}

/**
 * Σ_j coeff[t, j] · s_e · B_e·(A_e·x[t]) over each token's experts e, for backends that read data
 * synchronously (cpu, wasm, tensorflow): the k·T (token, expert) pairs are grouped by expert from
 * the indices read back, so each expert runs two products over its own tokens only; their rows are
 * put back in (token, slot) order and summed over the k slots. Nothing is of size E × T.
 */
export function groupedDelta(tokens: tf.Tensor2D, routing: Routing, experts: Expert[]): tf.Tensor2D {
  const [t, k] = routing.indices.shape;
  const outF = (experts[0] as Expert).b.shape[0] as number;
  if (taping()) return denseDelta(tokens, routing, experts);
  const idx = routing.indices.dataSync();
  const byExpert: number[][] = experts.map(() => []);
  for (let p = 0; p < idx.length; p++) byExpert[idx[p] as number]?.push(p);
  return tf.tidy(() => {
    const coeff = tf.reshape(routing.coefficients, [t * k]);
    const parts: tf.Tensor[] = [];
    const order: number[] = [];
    experts.forEach((e, i) => {
      const slots = byExpert[i] as number[];
      if (slots.length === 0) return;
      const rows = tf.gather(
        tokens,
        tf.tensor1d(
          Int32Array.from(slots, (p) => Math.floor(p / k)),
          'int32',
        ),
      );
      const y = tf.matMul(tf.matMul(rows, e.a, false, true), e.b, false, true); // [n, out]
      const c = tf.mul(tf.gather(coeff, tf.tensor1d(Int32Array.from(slots), 'int32')), e.scale);
      parts.push(tf.mul(y, tf.reshape(c, [slots.length, 1])));
      order.push(...slots);
    });
    // the rows, in (token, slot) order again
    const inverse = new Int32Array(order.length);
    order.forEach((p, i) => {
      inverse[p] = i;
    });
    const all = parts.length === 1 ? (parts[0] as tf.Tensor) : tf.concat(parts, 0);
    const ordered = tf.gather(all, tf.tensor1d(inverse, 'int32'));
    return (k === 1 ? ordered : tf.sum(tf.reshape(ordered, [t, k, outF]), 1)) as tf.Tensor2D;
  });
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
    const z = tf.matMul(
      tokens,
      tf.concat(
        experts.map((x) => x.a),
        0,
      ),
      false,
      true,
    ); // [T, E·r]
    const weighted = tf.reshape(tf.mul(tf.reshape(z, [t, e, r]), tf.reshape(tf.mul(dense, scales), [t, e, 1])), [
      t,
      e * r,
    ]);
    return tf.matMul(
      weighted,
      tf.concat(
        experts.map((x) => x.b),
        1,
      ),
      false,
      true,
    ) as tf.Tensor2D; // B_cat: [out, E·r]
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
