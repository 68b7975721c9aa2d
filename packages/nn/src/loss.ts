import * as tf from '@tensorflow/tfjs-core';
import { softmaxCrossEntropy } from '@lora/kernels';
import { gpuKernelsActive } from './fused';
import { isRecordingGradients } from './grad';
import { matmulNT, matmulTN, needsGrad } from './ops';

function checkTargets(what: string, rows: tf.Tensor, targets: tf.Tensor, rowsName: string): void {
  if (targets.dtype !== 'int32') throw new Error(`${what}: targets must be int32, got ${targets.dtype}`);
  if (rows.shape.slice(0, -1).join(',') !== targets.shape.join(',')) {
    throw new Error(
      `${what}: ${rowsName} [${rows.shape.join(', ')}] and targets [${targets.shape.join(', ')}] must agree on every dimension but the last`,
    );
  }
}

/** Per row of logits [n, c]: log Σ exp, and the logit at the (safe) target. */
function rowTerms(
  logits: tf.Tensor,
  safe: tf.Tensor,
): { max: tf.Tensor; e: tf.Tensor; sum: tf.Tensor; lse: tf.Tensor; picked: tf.Tensor } {
  const [n, c] = logits.shape as [number, number];
  const max = tf.max(logits, -1, true);
  const e = tf.exp(tf.sub(logits, max));
  const sum = tf.sum(e, -1, true);
  const lse = tf.reshape(tf.add(max, tf.log(sum)), [n]);
  // the target's logit, gathered from the flat logits at row·c + target
  const at = tf.add(tf.mul(tf.range(0, n, 1, 'int32'), tf.scalar(c, 'int32')), safe);
  const picked = tf.gather(tf.reshape(logits, [-1]), at);
  return { max, e, sum, lse, picked };
}

/**
 * Cross-entropy from logits `[N, C]` (or `[..., C]`) and integer targets `[N]` (or `[...]`), as
 * `torch.nn.functional.cross_entropy`: targets equal to `ignoreIndex` (default −100, Hugging Face's
 * label padding) count for nothing, and `'mean'` divides by the number of targets that count.
 * Computed with a stable log-softmax, as one op with its own gradient (softmax − one-hot, built only
 * in the backward pass; nothing of the logits' size is kept but the logits).
 *
 * @example
 * ```ts
 * const loss = crossEntropy(logits, labels); // scalar
 * ```
 */
export function crossEntropy(
  logits: tf.Tensor,
  targets: tf.Tensor,
  options: { ignoreIndex?: number; reduction?: 'mean' | 'sum' | 'none' } = {},
): tf.Tensor {
  // webgpu: @lora/kernels' (fused for 'mean'; it checks the inputs); elsewhere one op with its own gradient
  if (gpuKernelsActive()) return softmaxCrossEntropy(logits, targets, options);
  const ignore = options.ignoreIndex ?? -100;
  const reduction = options.reduction ?? 'mean';
  const c = logits.shape.at(-1) as number;
  checkTargets('crossEntropy', logits, targets, 'logits');
  const op = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    const flat = tf.reshape(x, [-1, c]);
    const t = tf.reshape(targets, [-1]);
    const valid = tf.cast(tf.notEqual(t, ignore), 'float32');
    const safe = tf.where(tf.notEqual(t, ignore), t, tf.zerosLike(t));
    const { lse, picked } = rowTerms(flat, safe);
    const losses = tf.mul(tf.sub(lse, picked), valid);
    // torch divides by the count of targets that count (NaN when there are none, as torch gives)
    const count = tf.sum(valid);
    const value =
      reduction === 'none'
        ? tf.reshape(losses, targets.shape)
        : reduction === 'sum'
          ? tf.sum(losses)
          : tf.div(tf.sum(losses), count);
    save([flat, lse, safe, valid, count]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [f, l, sf, vd, cnt] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
        const n = f.shape[0] as number;
        // d loss_i / d logits_i = softmax_i − onehot(target_i), weighted per row
        let w = reduction === 'none' ? tf.mul(tf.reshape(dy, [n]), vd) : tf.mul(vd, tf.reshape(dy, []));
        if (reduction === 'mean') w = tf.div(w, cnt);
        const p = tf.exp(tf.sub(f, tf.reshape(l, [n, 1])));
        const g = tf.mul(tf.sub(p, oneHotFloat(sf, c)), tf.reshape(w, [n, 1]));
        return tf.reshape(g, x.shape);
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (x: tf.Tensor) => tf.Tensor;
  return op(logits);
}

/** Options of {@link linearCrossEntropy}. */
export interface LinearCrossEntropyOptions {
  ignoreIndex?: number;
  /** Rows of logits computed at a time. Default: as many as make 8M logits (32 MiB). */
  chunkRows?: number;
  /**
   * wasm, frozen weight: W's vocabulary blocks, transposed ({@link transposedVocabBlocks}), kept by
   * the caller across calls. Without them each call transposes W whole (slower, see there).
   */
  vocabBlocks?: tf.Tensor[];
}

/**
 * The mean cross-entropy of `h·Wᵀ` (a language model's head: `h` [N, in], `weight` [vocab, in]) and
 * integer `targets` [N] (−100 ignored), without ever holding the [N, vocab] logits: rows are done a
 * chunk at a time, and when a gradient is being recorded each chunk's gradient (softmax − one-hot,
 * times W) is taken on the spot, so the backward pass only scales it (Liger Kernel's fused linear
 * cross-entropy). The same value as `crossEntropy(linear(h, weight), targets)`; a frozen weight gets
 * no gradient.
 *
 * @example
 * ```ts
 * const loss = linearCrossEntropy(hidden, lmHead.weight, labels); // hidden: [T, 576], weight: [49152, 576]
 * ```
 */
export function linearCrossEntropy(
  h: tf.Tensor,
  weight: tf.Tensor,
  targets: tf.Tensor,
  options: LinearCrossEntropyOptions = {},
): tf.Scalar {
  if (h.rank !== 2 || weight.rank !== 2 || h.shape[1] !== weight.shape[1])
    throw new Error(
      `linearCrossEntropy: h must be [N, in] and weight [vocab, in], got [${h.shape.join(', ')}] and [${weight.shape.join(', ')}]`,
    );
  checkTargets('linearCrossEntropy', h, targets, 'h');
  const ignore = options.ignoreIndex ?? -100;
  const [n, inF] = h.shape as [number, number];
  const vocab = weight.shape[0] as number;
  const chunk = options.chunkRows ?? Math.max(1, Math.floor(2 ** 23 / vocab));
  if (!(Number.isInteger(chunk) && chunk > 0))
    throw new Error(`linearCrossEntropy: chunkRows must be a positive integer, got ${chunk}`);
  const withW = needsGrad(weight);
  const grads = isRecordingGradients();

  const run = (hi: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => {
    const valid = tf.cast(tf.notEqual(targets, ignore), 'float32');
    const safe = tf.where(tf.notEqual(targets, ignore), targets, tf.zerosLike(targets));
    const count = tf.sum(valid);
    const given = options.vocabBlocks && !withW && tf.getBackend() === 'wasm' ? options.vocabBlocks : null;
    // wasm without blocks: one transposed copy of W for all chunks (XNNPACK packs it once per call)
    const wT = !given && tf.getBackend() === 'wasm' ? tf.transpose(w) : null;
    let total: tf.Tensor = tf.scalar(0);
    const dh: tf.Tensor[] = [];
    let dw: tf.Tensor | null = null;
    for (let r0 = 0; r0 < n; r0 += chunk) {
      const rows = Math.min(chunk, n - r0);
      const [part, dhPart, dwPart] = tf.tidy(() => {
        const hc = tf.slice(hi, [r0, 0], [rows, inF]);
        const sc = tf.slice(safe, [r0], [rows]);
        const vc = tf.slice(valid, [r0], [rows]);
        // the target's logit as a dot product with its row of W
        const wt = tf.gather(w, sc);
        const picked = tf.sum(tf.mul(hc, wt), -1);
        // per vocabulary block: its softmax q, row maximum m and Σexp(l − m) = 1 / max(q)
        const blockLogits = given ? given.map((b) => tf.matMul(hc, b)) : [wT ? tf.matMul(hc, wT) : matmulNT(hc, w)];
        const parts = blockLogits.map((logits) => {
          const m = tf.max(logits, -1, true);
          const q = tf.softmax(logits);
          logits.dispose();
          return { q, m, s: tf.div(1, tf.max(q, -1, true)) };
        });
        // log Σ over the whole row: m + log Σ_b s_b·exp(m_b − m)
        const m =
          parts.length === 1
            ? (parts[0] as { m: tf.Tensor }).m
            : tf.max(
                tf.concat(
                  parts.map((x) => x.m),
                  1,
                ),
                -1,
                true,
              );
        const weights = parts.map((x) => tf.mul(x.s, tf.exp(tf.sub(x.m, m))));
        const sum = weights.length === 1 ? (weights[0] as tf.Tensor) : tf.addN(weights);
        const lse = tf.reshape(tf.add(m, tf.log(sum)), [rows]);
        const loss = tf.sum(tf.mul(tf.sub(lse, picked), vc));
        if (!grads) return [loss];
        // d(mean loss)/d logits = (softmax − onehot)·valid/count, row by row
        const rowScale = tf.reshape(tf.div(vc, count), [rows, 1]);
        const probs = parts.map((x, i) => {
          const p = tf.mul(x.q, tf.div(tf.mul(weights[i] as tf.Tensor, rowScale), sum));
          x.q.dispose();
          return p;
        });
        if (withW) {
          const g = tf.sub(probs[0] as tf.Tensor, tf.mul(oneHotFloat(sc, vocab), rowScale));
          return [loss, tf.matMul(g, w), matmulTN(g, hc)];
        }
        let pw: tf.Tensor;
        if (given) {
          // (p·W)ᵀ = Σ_b W_bᵀ·p_bᵀ: the block is the left operand, which XNNPACK does not pack or re-stream
          let acc: tf.Tensor | null = null;
          probs.forEach((p, i) => {
            const part = tf.matMul(given[i] as tf.Tensor, tf.transpose(p));
            p.dispose();
            acc = acc ? addOwned(acc, part) : part;
          });
          pw = tf.transpose(acc as unknown as tf.Tensor);
        } else pw = tf.matMul(probs[0] as tf.Tensor, w);
        // (p − onehot·s)·W = p·W − s·W[target]: the one-hot part is a row lookup, never [rows, vocab]
        return [loss, tf.sub(pw, tf.mul(wt, rowScale))];
      });
      total = addOwned(total, part as tf.Tensor);
      if (dhPart) dh.push(dhPart);
      if (dwPart) dw = dw ? addOwned(dw, dwPart) : dwPart;
    }
    wT?.dispose();
    const value = tf.div(total, count);
    if (grads) save(dw ? [tf.concat(dh, 0), dw] : [dh.length === 1 ? (dh[0] as tf.Tensor) : tf.concat(dh, 0)]);
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const scale = tf.reshape(dy, []);
        return saved.map((g) => tf.mul(g, scale));
      },
    };
  };
  const op = withW
    ? tf.customGrad(((hi: tf.Tensor, w: tf.Tensor, save: tf.GradSaveFunc) => run(hi, w, save)) as unknown as Parameters<
        typeof tf.customGrad
      >[0])
    : tf.customGrad(((hi: tf.Tensor, save: tf.GradSaveFunc) => run(hi, weight, save)) as unknown as Parameters<
        typeof tf.customGrad
      >[0]);
  return (
    withW ? (op as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor)(h, weight) : (op as (a: tf.Tensor) => tf.Tensor)(h)
  ) as tf.Scalar;
}

/** Vocabulary rows per block: 2048 rows of a 576-wide W (4.5 MiB) stay in cache, the whole 113 MiB does not. */
const VOCAB_BLOCK = 2048;

/**
 * An LM head's weight W [vocab, in] cut into blocks of 2048 vocabulary rows, each transposed
 * ([in, ≤2048]): what {@link linearCrossEntropy} multiplies by on wasm. There XNNPACK streams the
 * whole right operand from memory for every few rows of the left one, which with a 49k-row head is
 * memory-bound (measured here: 14 GFLOP/s on the whole of W, 23 on 2048-row blocks, forward and
 * backward alike). Built on the host (slicing a large tensor on wasm copies all of it per slice);
 * CPU-side backends only. The caller owns the tensors and rebuilds them when W changes.
 *
 * @example
 * ```ts
 * const blocks = transposedVocabBlocks(lmHead.weight);
 * const loss = linearCrossEntropy(h, lmHead.weight, labels, { vocabBlocks: blocks });
 * ```
 */
export function transposedVocabBlocks(weight: tf.Tensor): tf.Tensor[] {
  const [vocab, inF] = weight.shape as [number, number];
  const values = weight.dataSync() as Float32Array;
  const out: tf.Tensor[] = [];
  for (let v0 = 0; v0 < vocab; v0 += VOCAB_BLOCK) {
    const rows = Math.min(VOCAB_BLOCK, vocab - v0);
    const t = new Float32Array(rows * inF);
    for (let r = 0; r < rows; r++) {
      const from = (v0 + r) * inF;
      for (let c = 0; c < inF; c++) t[c * rows + r] = values[from + c] as number;
    }
    out.push(tf.tensor2d(t, [inF, rows]));
  }
  return out;
}

function addOwned(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const s = tf.add(a, b);
  a.dispose();
  b.dispose();
  return s;
}

/** One-hot rows as float32 (tfjs-backend-wasm 4.22's OneHot writes integer bits when asked for float32). */
function oneHotFloat(indices: tf.Tensor, depth: number): tf.Tensor {
  return tf.cast(tf.oneHot(indices, depth), 'float32');
}
