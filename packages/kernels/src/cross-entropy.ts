import * as tf from '@tensorflow/tfjs-core';
import { fusedActive } from './active';
import {
  ROW_WG,
  type WebGPUProgramLike,
  flat,
  registerGradientOnce,
  registerWebGPUKernel,
  reshaped,
  rowProgram,
  runKernel,
  treeReduce,
  once,
} from './webgpu-program';

const FWD = 'LoraSoftmaxCrossEntropy';
const BWD = 'LoraSoftmaxCrossEntropyGrad';

/** log Σ exp over each row of logits [N, V] (max-shifted): lse [N]. */
function lseProgram(n: number): WebGPUProgramLike {
  return rowProgram(
    `${FWD}Lse`,
    [n],
    ['logits'],
    n,
    'rows : i32, v : i32,',
    `
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      let base = row * uniforms.v;
      var m = -uniforms.INFINITY;
      for (var i = lid; i < uniforms.v; i = i + ${ROW_WG}) { m = max(m, logits[base + i]); }
      red[lid] = m;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `max(${a}, ${b})`)}
      let rowMax = red[0];
      workgroupBarrier();
      var total = 0.0;
      for (var i = lid; i < uniforms.v; i = i + ${ROW_WG}) { total = total + exp(logits[base + i] - rowMax); }
      red[lid] = total;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      if (rowRaw < uniforms.rows && lid == 0) { result[row] = rowMax + log(red[0]); }
    }`,
  );
}

/** One workgroup: mean over the rows whose target counts of lse − logit[target] (NaN when none counts). */
function meanProgram(): WebGPUProgramLike {
  return {
    outputShape: [1],
    shaderKey: `${FWD}Mean`,
    dispatchLayout: { x: [0] },
    dispatch: [1, 1, 1],
    variableNames: ['logits', 'lse', 'targets'],
    workgroupSize: [ROW_WG, 1, 1],
    uniforms: 'rows : i32, v : i32, ignore : i32,',
    getUserCode: () => `
    var<workgroup> red : array<vec2<f32>, ${ROW_WG}>;
    fn main(index : i32) {
      let lid = i32(localId.x);
      var acc = vec2<f32>(0.0, 0.0);
      for (var n = lid; n < uniforms.rows; n = n + ${ROW_WG}) {
        let t = targets[n];
        if (t != uniforms.ignore) {
          // a target outside the vocabulary counts but adds nothing (as the one-hot composite)
          var term = 0.0;
          if (t >= 0 && t < uniforms.v) { term = lse[n] - logits[n * uniforms.v + t]; }
          acc = acc + vec2<f32>(term, 1.0);
        }
      }
      red[lid] = acc;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      if (lid == 0) {
        let sums = red[0];
        if (sums.y > 0.0) { result[0] = sums.x / sums.y; } else { result[0] = uniforms.NAN; }
      }
    }`,
  };
}

/** dlogits = (softmax − onehot(target)) · dy / count on the rows that count, 0 elsewhere. */
function gradProgram(n: number, v: number): WebGPUProgramLike {
  return rowProgram(
    BWD,
    [n, v],
    ['logits', 'targets', 'lse', 'dy'],
    n,
    'rows : i32, v : i32, ignore : i32,',
    `
    fn rowMain(lid : i32, row : i32, rowRaw : i32) {
      // the count of targets that count, again per row: N reads, cheap beside the row's V writes
      var cnt = 0.0;
      for (var k = lid; k < uniforms.rows; k = k + ${ROW_WG}) {
        if (targets[k] != uniforms.ignore) { cnt = cnt + 1.0; }
      }
      red[lid] = cnt;
      workgroupBarrier();
      ${treeReduce('red', (a, b) => `${a} + ${b}`)}
      let coef = dy[0] / red[0];
      let t = targets[row];
      let counts = t != uniforms.ignore && t >= 0 && t < uniforms.v;
      let l = lse[row];
      let base = row * uniforms.v;
      if (rowRaw < uniforms.rows) {
        for (var i = lid; i < uniforms.v; i = i + ${ROW_WG}) {
          var g = 0.0;
          if (counts) { g = (exp(logits[base + i] - l) - select(0.0, 1.0, i == t)) * coef; }
          result[base + i] = g;
        }
      }
    }`,
  );
}

const register = once(() => {
  registerWebGPUKernel(FWD, ({ inputs, backend, attrs }) => {
    const { logits, targets } = inputs as { logits: tf.TensorInfo; targets: tf.TensorInfo };
    const [n, v] = logits.shape as [number, number];
    const dims = [
      { type: 'int32' as const, data: [n] },
      { type: 'int32' as const, data: [v] },
    ];
    const lse = backend.runWebGPUProgram(lseProgram(n), [logits], 'float32', dims);
    const loss = backend.runWebGPUProgram(meanProgram(), [logits, lse, targets], 'float32', [
      ...dims,
      { type: 'int32', data: [attrs.ignoreIndex as number] },
    ]);
    return [reshaped(loss, []), lse];
  });
  registerWebGPUKernel(BWD, ({ inputs, backend, attrs }) => {
    const { logits, targets, lse, dy } = inputs as Record<string, tf.TensorInfo>;
    const [n, v] = (logits as tf.TensorInfo).shape as [number, number];
    const out = backend.runWebGPUProgram(
      gradProgram(n, v),
      [logits as tf.TensorInfo, targets as tf.TensorInfo, lse as tf.TensorInfo, flat(dy as tf.TensorInfo, [1])],
      'float32',
      [
        { type: 'int32', data: [n] },
        { type: 'int32', data: [v] },
        { type: 'int32', data: [attrs.ignoreIndex as number] },
      ],
    );
    return out;
  });
  registerGradientOnce({
    kernelName: FWD,
    inputsToSave: ['logits', 'targets'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved, attrs) => {
      const [logits, targets, lse] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
      const dy = (dys as tf.Tensor[])[0] as tf.Tensor;
      const ignoreIndex = (attrs as { ignoreIndex: number }).ignoreIndex;
      return {
        logits: () => runKernel(BWD, { logits, targets, lse, dy }, { ignoreIndex }),
        targets: () => tf.zerosLike(targets),
      };
    },
  });
});

/** The composite (any backend): a stable log-softmax, the targets' entries picked with a one-hot. */
function composite(logits: tf.Tensor, targets: tf.Tensor, ignore: number, reduction: 'mean' | 'sum' | 'none') {
  const c = logits.shape.at(-1) as number;
  return tf.tidy(() => {
    const flatLogits = tf.reshape(logits, [-1, c]);
    const t = tf.reshape(targets, [-1]);
    const valid = tf.notEqual(t, ignore);
    const safe = tf.where(valid, t, tf.zerosLike(t));
    const logp = tf.logSoftmax(flatLogits);
    const picked = tf.sum(tf.mul(logp, tf.oneHot(safe, c)), -1);
    const losses = tf.mul(tf.neg(picked), tf.cast(valid, 'float32'));
    if (reduction === 'none') return tf.reshape(losses, targets.shape);
    const total = tf.sum(losses);
    // torch divides by the count of targets that count (NaN when there are none, as torch gives)
    return reduction === 'sum' ? total : tf.div(total, tf.sum(tf.cast(valid, 'float32')));
  });
}

/**
 * Cross-entropy from logits `[..., C]` and int32 targets `[...]`, as
 * `torch.nn.functional.cross_entropy`: targets equal to `ignoreIndex` (default −100) count for
 * nothing, `'mean'` divides by the number that count. On webgpu with fused kernels the mean runs in
 * three dispatches (row log-sum-exp, mean, and one for the logits' gradient) and never builds a
 * one-hot or a second `[N, C]` tensor in the forward pass; elsewhere, and for `'sum'`/`'none'`, the
 * composite (a stable log-softmax and a one-hot).
 *
 * @example
 * ```ts
 * const loss = softmaxCrossEntropy(logits, labels); // scalar
 * ```
 */
export function softmaxCrossEntropy(
  logits: tf.Tensor,
  targets: tf.Tensor,
  options: { ignoreIndex?: number; reduction?: 'mean' | 'sum' | 'none' } = {},
): tf.Tensor {
  const ignore = options.ignoreIndex ?? -100;
  const reduction = options.reduction ?? 'mean';
  if (targets.dtype !== 'int32') throw new Error(`crossEntropy: targets must be int32, got ${targets.dtype}`);
  if (logits.shape.slice(0, -1).join(',') !== targets.shape.join(',')) {
    throw new Error(
      `crossEntropy: logits [${logits.shape.join(', ')}] and targets [${targets.shape.join(', ')}] must agree on every dimension but the last`,
    );
  }
  if (reduction === 'mean' && fusedActive() && logits.dtype === 'float32' && targets.size > 0) {
    register();
    const c = logits.shape.at(-1) as number;
    return tf.tidy(() => {
      const [loss] = runKernel<tf.Tensor[]>(
        FWD,
        { logits: tf.reshape(logits, [-1, c]), targets: tf.reshape(targets, [-1]) },
        { ignoreIndex: ignore },
      );
      return loss as tf.Tensor;
    });
  }
  return composite(logits, targets, ignore, reduction);
}
