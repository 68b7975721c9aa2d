import * as tf from '@tensorflow/tfjs-core';
import { LoraConfigError, type LoraGaConfig, type LoraInitContext } from '@lora/core';
import { svdLowRank } from '@lora/linalg';
import { type Module, defaultRng } from '@lora/nn';
import { attachGradient, gradientTensor, peekGradient, takeGradient } from './gradient-store';

/** The singular components A and B take (PEFT 0.21's `lora_ga_init`), by direction, for rank r. */
export function componentIndices(direction: LoraGaConfig['direction'], r: number): { a: number[]; b: number[] } {
  const range = (from: number, to: number, step = 1) =>
    Array.from({ length: Math.ceil((to - from) / step) }, (_, i) => from + i * step);
  switch (direction) {
    case 'ArBr': // A the odd components, B the even ones
      return { a: range(1, 2 * r, 2), b: range(0, 2 * r, 2) };
    case 'A2rBr': // A the second r, B the first r
      return { a: range(r, 2 * r), b: range(0, r) };
    case 'ArB2r': // A the first r, B the second r (the default)
      return { a: range(0, r), b: range(r, 2 * r) };
    case 'random': {
      // torch.randperm(2r)[:r], from the seeded generator: one index set for both A and B, as PEFT
      const perm = range(0, 2 * r);
      const rng = defaultRng();
      for (let i = perm.length - 1; i > 0; i--) {
        const j = rng.nextUint32() % (i + 1);
        [perm[i], perm[j]] = [perm[j] as number, perm[i] as number];
      }
      const picked = perm.slice(0, r);
      return { a: picked, b: picked };
    }
  }
}

/**
 * One layer's initialisations run one after another: each uploads its gradient (which may wait in
 * host memory, offloaded) only when its turn comes, so at most one layer's gradient and SVD live on the
 * backend at a time.
 */
let queue: Promise<void> = Promise.resolve();

/**
 * PEFT 0.21's `lora_ga_init` for one adapter on one Linear or TransposedLinear layer:
 *
 * - without a gradient from `preprocessLoraga` (an adapter being loaded, a layer no gradient reached)
 *   the default init (Kaiming-uniform A, zero B), as PEFT;
 * - with one but no `loraGaConfig`, PEFT's error;
 * - otherwise G (the mean gradient, `[out, in]`: transposed back from a TransposedLinear's layout) is
 *   decomposed by a randomized SVD, `svd_lowrank(G, q = min(4r, min(out, in)), niter = 4)` (the sketch
 *   drawn from `@lora/nn`'s seeded generator); A takes r right singular vectors and B r left ones
 *   times their singular values, by `direction`; `scale` multiplies B by out^¼/√γ (`'stable'`, with
 *   PEFT's out = the weight's first stored dimension), by σ₁(W)/S_B[0] (`'weight_svd'`, σ₁ from
 *   `svd_lowrank(W, q = r, niter = 4)`), divides A and B by s (`'gd_scale'`) or leaves them (`'unit'`);
 *   and the base weight becomes W − s·B·A, so that the model's output is unchanged at init.
 *
 * Beyond PEFT: a layer with fewer than 2r singular components (min(out, in) < 2r), where PEFT makes
 * factors of the wrong shape, is an error naming the layer; B's bias (`loraBias`) is zeroed, as
 * `@lora/core`'s PiSSA and OLoRA do, so that the output at init is the base model's (PEFT leaves the
 * bias nn.Linear drew).
 */
export function loraGaInit(ctx: LoraInitContext): void | Promise<void> {
  const base = ctx.layer.baseLayer as unknown as Module;
  const stored = peekGradient(base);
  if (!stored) {
    ctx.resetLoraParameters(true);
    return;
  }
  const config = ctx.config.loraGaConfig;
  if (!config)
    throw new LoraConfigError(
      "lora_ga_config must be provided when init_lora_weights='lora_ga'. Please pass lora_ga_config=LoraGAConfig(...) to LoraConfig.",
      { field: 'loraGaConfig' },
    );
  const where = ctx.path === '' ? 'the layer' : `'${ctx.path}'`;
  const stShape = ctx.baseWeight.shape as [number, number];
  if (stored.shape.join(',') !== stShape.join(','))
    throw new Error(
      `LoRA-GA: the gradient attached to ${where} is [${stored.shape.join(', ')}] but its weight is [${stShape.join(', ')}]; run preprocessLoraga on this model again`,
    );
  const fifo = ctx.settings.fanInFanOut;
  const [out, inF] = fifo ? [stShape[1], stShape[0]] : stShape;
  const r = ctx.settings.r;
  if (Math.min(out, inF) < 2 * r)
    throw new LoraConfigError(
      `LoRA-GA takes 2r = ${2 * r} singular components of the gradient of ${where}, whose weight [${stShape.join(', ')}] has only ${Math.min(out, inF)}; use r ≤ ${Math.floor(Math.min(out, inF) / 2)} for this layer (rankPattern), or leave it out of targetModules`,
      { field: ctx.settings.r === ctx.config.r ? 'r' : 'rankPattern' },
    );
  takeGradient(base);
  const run = queue.then(() =>
    initFromGradient(ctx, config, stored, { out, inF, fifo }).catch((e: unknown) => {
      // as PEFT, a failed init leaves the gradient where it was (unless another one was attached since)
      if (!peekGradient(base)) attachGradient(base, stored);
      else if (stored.tensor) stored.tensor.dispose();
      throw e;
    }),
  );
  queue = run.catch(() => undefined);
  return run.then(() => {
    stored.tensor?.dispose();
  });
}

async function initFromGradient(
  ctx: LoraInitContext,
  config: LoraGaConfig,
  stored: Parameters<typeof gradientTensor>[0],
  { out, inF, fifo }: { out: number; inF: number; fifo: boolean },
): Promise<void> {
  const r = ctx.settings.r;
  const s = ctx.scaling;
  const q = Math.min(4 * r, Math.min(out, inF));
  const g = tf.tidy(() => {
    const t = gradientTensor(stored);
    return (fifo ? tf.transpose(t) : t) as tf.Tensor2D;
  });
  let factors: { U: tf.Tensor2D; S: tf.Tensor1D; V: tf.Tensor2D };
  try {
    factors = await svdLowRank(g, { q, niter: 4, seed: defaultRng().nextUint32() });
  } finally {
    g.dispose();
  }
  const { U, S, V } = factors;
  let a: tf.Tensor2D | undefined;
  let b: tf.Tensor2D | undefined;
  try {
    const sv = (await S.data()) as Float32Array;
    const { a: ia, b: ib } = componentIndices(config.direction, r);
    const sB = ib.map((i) => sv[i] as number);
    let factorB = 1;
    let factorA = 1;
    if (config.scale === 'stable')
      factorB = (ctx.baseWeight.shape[0] as number) ** 0.25 / Math.sqrt(config.stableGamma);
    else if (config.scale === 'weight_svd') {
      const w = tf.tidy(() => (fifo ? tf.transpose(ctx.baseWeight) : tf.clone(ctx.baseWeight)) as tf.Tensor2D);
      const ws = await svdLowRank(w, { q: r, niter: 4, seed: defaultRng().nextUint32() }).finally(() => w.dispose());
      const sigma1 = ((await ws.S.data())[0] as number) ?? 0;
      tf.dispose([ws.U, ws.S, ws.V]);
      if ((sB[0] as number) > 0) factorB = sigma1 / (sB[0] as number);
    } else if (config.scale === 'gd_scale') {
      factorA = 1 / s;
      factorB = 1 / s;
    }
    // PEFT divides (gd_scale) or multiplies in float32; the same order of operations here
    a = tf.tidy(() => {
      const rows = tf.transpose(tf.gather(V, ia, 1)) as tf.Tensor2D; // Vhᵀ rows: [r, in]
      return (
        factorA === 1 ? rows : config.scale === 'gd_scale' ? tf.div(rows, s) : tf.mul(rows, factorA)
      ) as tf.Tensor2D;
    });
    b = tf.tidy(() => {
      const cols = tf.mul(tf.gather(U, ib, 1), tf.tensor1d(sB)) as tf.Tensor2D; // U[:, I]·diag(S_B): [out, r]
      return (
        factorB === 1 ? cols : config.scale === 'gd_scale' ? tf.div(cols, s) : tf.mul(cols, factorB)
      ) as tf.Tensor2D;
    });
    const [fa, fb] = [a, b];
    tf.tidy(() => {
      ctx.loraA.assign(fa);
      ctx.loraB.assign(fb);
      if (ctx.loraBBias) ctx.loraBBias.assign(tf.zerosLike(ctx.loraBBias));
      const ba = tf.mul(tf.matMul(fb, fa), s);
      ctx.baseWeight.assign(tf.sub(ctx.baseWeight, fifo ? tf.transpose(ba) : ba));
    });
  } finally {
    tf.dispose([U, S, V, ...(a ? [a] : []), ...(b ? [b] : [])]);
  }
}
