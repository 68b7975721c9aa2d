import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';

/**
 * The random source layers initialise from. A module built after `manualSeed(s)` gets the same
 * initial weights as the PyTorch module built after `torch.manual_seed(s)`, because
 * `@lora/tensor`'s Generator reproduces torch's CPU generator and the draws happen in torch's order.
 */
let defaultGenerator = new Generator(0);

/**
 * Reseeds the generator layer initialisers use (PyTorch's `torch.manual_seed`).
 *
 * @example
 * ```ts
 * manualSeed(0);
 * const lin = new Linear(16, 8); // same weights as torch.manual_seed(0); nn.Linear(16, 8)
 * ```
 */
export function manualSeed(seed: number): Generator {
  defaultGenerator = new Generator(seed);
  return defaultGenerator;
}

/** The generator layer initialisers draw from. */
export function defaultRng(): Generator {
  return defaultGenerator;
}

let skipInit = 0;

/**
 * Builds modules without drawing initial weights: parameters start as zeros (as PyTorch's
 * `init_empty_weights` or the meta device). For models about to load a checkpoint, where random
 * initialisation would only cost time.
 *
 * @example
 * ```ts
 * const model = withoutInit(() => new LlamaForCausalLM(config));
 * model.loadStateDict(weights);
 * ```
 */
export function withoutInit<T>(build: () => T): T {
  skipInit++;
  try {
    return build();
  } finally {
    skipInit--;
  }
}

/** Enters (+1) or leaves (−1) {@link withoutInit}'s mode, for a constructor that must call `super` itself. */
export function skipInitScope(delta: 1 | -1): void {
  skipInit += delta;
}

/** True inside {@link withoutInit}: initialisers return zeros. */
export function initSkipped(): boolean {
  return skipInit > 0;
}

/** A tensor drawn uniform in [-bound, bound) (PyTorch's `uniform_(-bound, bound)`). */
export function uniformInit(shape: number[], bound: number, g = defaultGenerator): tf.Tensor {
  return skipInit > 0 ? tf.zeros(shape) : g.rand(shape, -bound, bound);
}

/** A tensor drawn N(mean, std²) (PyTorch's `normal_(mean, std)`). */
export function normalInit(shape: number[], std = 1, mean = 0, g = defaultGenerator): tf.Tensor {
  return skipInit > 0 ? tf.zeros(shape) : g.randn(shape, mean, std);
}

/** `kaiming_uniform_(w, a=√5)`, PyTorch's default for Linear and Conv weights: bound = 1/√fan_in. */
export function kaimingUniformDefault(shape: number[], fanIn: number, g = defaultGenerator): tf.Tensor {
  // gain = √(2 / (1 + a²)) with a = √5; bound = √3 · gain / √fan_in (≈ 1/√fan_in). Computed in the
  // same order as torch.nn.init so that the float32 bound, and so every draw, is bit-identical.
  const a = Math.sqrt(5);
  const gain = Math.sqrt(2 / (1 + a ** 2));
  const std = gain / Math.sqrt(fanIn);
  return uniformInit(shape, Math.sqrt(3) * std, g);
}
