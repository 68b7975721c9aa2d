import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import {
  type WebGPUProgramLike,
  elementwiseProgram,
  registerWebGPUKernel,
  reshaped,
  runKernel,
  once,
} from './webgpu-program';

const SHRINK = 'LoraGatheredShrink';
const EXPAND = 'LoraGatheredExpand';
/** Threads of a shrink workgroup (one workgroup per token and slot). */
const SHRINK_WG = 64;
/** Rank rows a shrink workgroup accumulates at once (its shared array holds SHRINK_WG × this). */
const RANK_CHUNK = 16;
/** Most values the composite gathers at once (tokens are taken in chunks below it). */
const COMPOSITE_VALUES = 1 << 24;

/**
 * z[t·k + j, i] = Σ_f x[t, f] · a[e, i, f] with e = indices[t, j]: one workgroup per (token, slot),
 * its threads striding along `in` (coalesced reads of x and of a's rows), the rank taken
 * {@link RANK_CHUNK} rows at a time through a shared array.
 */
function shrinkProgram(rows: number, r: number): WebGPUProgramLike {
  const chunk = Math.min(r, RANK_CHUNK);
  return {
    outputShape: [rows, r],
    shaderKey: `${SHRINK}_c${chunk}`,
    dispatchLayout: { x: [0] },
    dispatch: [rows, 1, 1],
    variableNames: ['x', 'a', 'indices'],
    workgroupSize: [SHRINK_WG, 1, 1],
    uniforms: 'rows : i32, k : i32, r : i32, inF : i32, experts : i32,',
    getUserCode: () => `
      var<workgroup> part : array<f32, ${SHRINK_WG * chunk}>;
      fn main(index : i32) {
        let lid = i32(localId.x);
        // tfjs folds a flat dispatch over 65 535 workgroups into a square: undo it
        let rowRaw = i32(workgroupId.y * numWorkgroups.x + workgroupId.x);
        let row = min(rowRaw, uniforms.rows - 1);
        let t = row / uniforms.k;
        let e = indices[row];
        let valid = e >= 0 && e < uniforms.experts;
        let eSafe = select(0, e, valid);
        for (var c = 0; c < uniforms.r; c = c + ${chunk}) {
          var acc : array<f32, ${chunk}>;
          for (var i = 0; i < ${chunk}; i = i + 1) { acc[i] = 0.0; }
          for (var f = lid; f < uniforms.inF; f = f + ${SHRINK_WG}) {
            let xv = x[t * uniforms.inF + f];
            for (var i = 0; i < ${chunk}; i = i + 1) {
              if (c + i < uniforms.r) { acc[i] = acc[i] + xv * a[(eSafe * uniforms.r + c + i) * uniforms.inF + f]; }
            }
          }
          for (var i = 0; i < ${chunk}; i = i + 1) { part[lid * ${chunk} + i] = acc[i]; }
          workgroupBarrier();
          if (lid < ${chunk} && c + lid < uniforms.r && rowRaw < uniforms.rows) {
            var total = 0.0;
            for (var w = 0; w < ${SHRINK_WG}; w = w + 1) { total = total + part[w * ${chunk} + lid]; }
            result[row * uniforms.r + c + lid] = select(0.0, total, valid);
          }
          workgroupBarrier();
        }
      }`,
  };
}

/** y[t, o] = Σ_j weights[t, j] · Σ_i b[e, o, i] · z[t·k + j, i], e = indices[t, j]: one thread per output. */
function expandProgram(tokens: number, outF: number): WebGPUProgramLike {
  return elementwiseProgram(
    EXPAND,
    [tokens, outF],
    ['z', 'b', 'indices', 'weights'],
    1,
    'k : i32, r : i32, outF : i32, experts : i32,',
    `
    let t = index / uniforms.outF;
    let o = index - t * uniforms.outF;
    var total = 0.0;
    for (var j = 0; j < uniforms.k; j = j + 1) {
      let slot = t * uniforms.k + j;
      let e = indices[slot];
      if (e >= 0 && e < uniforms.experts) {
        var y = 0.0;
        let bRow = (e * uniforms.outF + o) * uniforms.r;
        for (var i = 0; i < uniforms.r; i = i + 1) { y = y + b[bRow + i] * z[slot * uniforms.r + i]; }
        total = total + weights[slot] * y;
      }
    }
    setOutputAtIndex(index, total);`,
  );
}

const register = once(() => {
  registerWebGPUKernel(SHRINK, ({ inputs, backend }) => {
    const { x, a, indices } = inputs as Record<string, tf.TensorInfo>;
    const [tokens, inF] = (x as tf.TensorInfo).shape as [number, number];
    const [experts, r] = (a as tf.TensorInfo).shape as [number, number, number];
    const k = (indices as tf.TensorInfo).shape[1] as number;
    const rows = tokens * k;
    const ints = [rows, k, r, inF, experts].map((v) => ({ type: 'int32' as const, data: [v] }));
    return backend.runWebGPUProgram(
      shrinkProgram(rows, r),
      [x as tf.TensorInfo, a as tf.TensorInfo, indices as tf.TensorInfo],
      'float32',
      ints,
    );
  });
  registerWebGPUKernel(EXPAND, ({ inputs, backend, attrs }) => {
    const { z, b, indices, weights } = inputs as Record<string, tf.TensorInfo>;
    const [experts, outF, r] = (b as tf.TensorInfo).shape as [number, number, number];
    const [tokens, k] = (indices as tf.TensorInfo).shape as [number, number];
    const ints = [k, r, outF, experts].map((v) => ({ type: 'int32' as const, data: [v] }));
    const out = backend.runWebGPUProgram(
      expandProgram(tokens, outF),
      [z as tf.TensorInfo, b as tf.TensorInfo, indices as tf.TensorInfo, weights as tf.TensorInfo],
      'float32',
      ints,
    );
    return reshaped(out, [tokens, attrs.outF as number]);
  });
});

/** The composite: the chosen factors gathered per (token, slot), in chunks of tokens; differentiable. */
function composite(x: tf.Tensor2D, a: tf.Tensor3D, b: tf.Tensor3D, indices: tf.Tensor2D, weights: tf.Tensor2D) {
  const [tokens, inF] = x.shape;
  const [, r] = a.shape;
  const outF = b.shape[1];
  const k = indices.shape[1];
  const step = Math.max(1, Math.floor(COMPOSITE_VALUES / Math.max(1, k * r * (inF + outF))));
  return tf.tidy(() => {
    const parts: tf.Tensor[] = [];
    for (let t0 = 0; t0 < tokens; t0 += step) {
      const n = Math.min(step, tokens - t0);
      const idx = tf.reshape(tf.slice(indices, [t0, 0], [n, k]), [n * k]);
      const xs = tf.reshape(tf.tile(tf.reshape(tf.slice(x, [t0, 0], [n, inF]), [n, 1, inF]), [1, k, 1]), [
        n * k,
        inF,
        1,
      ]);
      const z = tf.matMul(tf.gather(a, idx), xs); // [n·k, r, 1]
      const y = tf.reshape(tf.matMul(tf.gather(b, idx), z), [n, k, outF]);
      parts.push(tf.sum(tf.mul(y, tf.expandDims(tf.slice(weights, [t0, 0], [n, k]), 2)), 1));
    }
    return (parts.length === 1 ? parts[0] : tf.concat(parts, 0)) as tf.Tensor2D;
  });
}

/** Whether a gradient tape is recording (the fused kernels have no gradient). */
function taping(): boolean {
  return ((tf.engine().state as unknown as { gradientDepth?: number }).gradientDepth ?? 0) > 0;
}

/**
 * Several low-rank adapters applied per row, each row through its own few (multi-LoRA routing, an
 * Arrow router's top-k experts): `y[t] = Σ_j weights[t, j] · b[e]·(a[e]·x[t])` with
 * `e = indices[t, j]`, for `x` `[T, in]`, stacked factors `a` `[E, r, in]` (each a LoRA `A`) and `b`
 * `[E, out, r]` (each a `B`), int32 `indices` and float `weights` `[T, k]`. Work and memory are
 * proportional to `k`, never to `E`: nothing of shape `[T, E, …]` is made.
 *
 * On webgpu with fused kernels: two dispatches that read the chosen factors where they lie (no
 * gathered copy; an index outside `[0, E)` adds nothing), and no gradient (inside a gradient tape the
 * composite runs). Elsewhere the composite: the chosen factors gathered per row (in chunks of rows)
 * and two batched products, differentiable (the factors' gradients need tfjs's UnsortedSegmentSum,
 * which the wasm backend lacks; x's work everywhere).
 *
 * @example
 * ```ts
 * // three experts of rank 4 on a 16 → 8 layer; each of 5 tokens goes through 2 of them
 * const y = gatheredLowRank(x, aStack, bStack, topIndices, coefficients); // [5, 8]
 * ```
 */
export function gatheredLowRank(
  x: tf.Tensor2D,
  a: tf.Tensor3D,
  b: tf.Tensor3D,
  indices: tf.Tensor2D,
  weights: tf.Tensor2D,
): tf.Tensor2D {
  const [tokens, inF] = x.shape;
  const [experts, r, aIn] = a.shape;
  const [bExperts, outF, bR] = b.shape;
  if (x.rank !== 2 || a.rank !== 3 || b.rank !== 3 || aIn !== inF || bExperts !== experts || bR !== r)
    throw new Error(
      `gatheredLowRank: x [T, in], a [E, r, in] and b [E, out, r] must agree; got x [${x.shape.join(', ')}], a [${a.shape.join(', ')}], b [${b.shape.join(', ')}]`,
    );
  if (indices.dtype !== 'int32' || indices.shape.join(',') !== weights.shape.join(',') || indices.shape[0] !== tokens)
    throw new Error(
      `gatheredLowRank: indices (int32) and weights must both be [T, k] with T = ${tokens}; got indices ${indices.dtype} [${indices.shape.join(', ')}], weights [${weights.shape.join(', ')}]`,
    );
  if (tokens === 0 || indices.shape[1] === 0) return tf.zeros([tokens, outF]);
  if (fusedActive() && !taping() && [x, a, b, weights].every((t) => t.dtype === 'float32')) {
    register();
    return tf.tidy(() => {
      const z = runKernel(SHRINK, { x, a, indices });
      return runKernel(EXPAND, { z, b, indices, weights }, { outF }) as tf.Tensor2D;
    });
  }
  return composite(x, a, b, indices, weights);
}
