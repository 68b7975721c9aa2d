import * as tf from '@tensorflow/tfjs-core';
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
    const blocks = vocabBlocks(w, withW);
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
        const parts = blocks.map((blk) => {
          const logits = blk.wT ? tf.matMul(hc, blk.wT) : matmulNT(hc, blk.w);
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
        let grad: tf.Tensor | null = null;
        let gw: tf.Tensor | null = null;
        parts.forEach((x, i) => {
          const blk = blocks[i] as VocabBlock;
          const p = tf.mul(x.q, tf.div(tf.mul(weights[i] as tf.Tensor, rowScale), sum));
          x.q.dispose();
          if (withW) {
            // one block (see vocabBlocks): the one-hot part is taken here, for W's gradient too
            const g = tf.sub(p, tf.mul(oneHotFloat(sc, vocab), rowScale));
            p.dispose();
            grad = tf.matMul(g, blk.w);
            gw = matmulTN(g, hc);
            return;
          }
          const part = tf.matMul(p, blk.w);
          p.dispose();
          grad = grad ? addOwned(grad, part) : part;
        });
        if (withW) return [loss, grad as unknown as tf.Tensor, gw as unknown as tf.Tensor];
        // (p − onehot·s)·W = p·W − s·W[target]: the one-hot part is a row lookup, never [rows, vocab]
        return [loss, tf.sub(grad as unknown as tf.Tensor, tf.mul(wt, rowScale))];
      });
      total = addOwned(total, part as tf.Tensor);
      if (dhPart) dh.push(dhPart);
      if (dwPart) dw = dw ? addOwned(dw, dwPart) : dwPart;
    }
    for (const blk of blocks) {
      blk.wT?.dispose();
      if (blk.w !== w) blk.w.dispose();
    }
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

interface VocabBlock {
  /** Rows of W, [size, in]. */
  w: tf.Tensor;
  /** wasm: the same, transposed [in, size], for products without transpose flags. */
  wT: tf.Tensor | null;
}

/** Vocabulary rows per block on wasm: 2048 rows of a 576-wide W (4.5 MiB) stay in cache, the whole 113 MiB does not. */
const VOCAB_BLOCK = 2048;

/**
 * W split into blocks of vocabulary rows, for this call. On wasm XNNPACK streams the whole right
 * operand from memory for every few rows of the left one: with a 49k-row head that is memory-bound
 * (measured 14 GFLOP/s against 23 for 2048-row blocks, forward and backward alike). Elsewhere, and
 * for a trainable W, one block: W itself.
 */
function vocabBlocks(w: tf.Tensor, withW: boolean): VocabBlock[] {
  const [vocab, inF] = w.shape as [number, number];
  if (tf.getBackend() !== 'wasm') return [{ w, wT: null }];
  if (withW || vocab <= VOCAB_BLOCK) return [{ w, wT: tf.transpose(w) }];
  const out: VocabBlock[] = [];
  for (let v0 = 0; v0 < vocab; v0 += VOCAB_BLOCK) {
    const rows = tf.slice(w, [v0, 0], [Math.min(VOCAB_BLOCK, vocab - v0), inF]);
    out.push({ w: rows, wT: tf.transpose(rows) });
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
