import * as tf from '@tensorflow/tfjs-core';
import type { Generator } from '@lora/tensor';
import { gradientsOf, isRecordingGradients } from './grad';
import { defaultRng } from './init';
import { Dropout } from './layers';
import type { Module, Parameter } from './module';

/** Options of {@link checkpoint}. */
export interface CheckpointOptions {
  /**
   * The module `fn` runs: its trainable parameters get gradients, and the random generators of its
   * dropout layers are rewound for the recomputation, so that it draws the masks the first run drew.
   */
  module?: Module;
  /** Further parameters `fn` uses (beyond the module's), trainable ones get gradients. */
  parameters?: Parameter[];
}

/**
 * Gradient checkpointing (PyTorch's `torch.utils.checkpoint`): runs `fn(...inputs)` keeping none
 * of its activations, only its inputs; the backward pass runs `fn` again to get them back, one
 * checkpointed block at a time. Memory for a stack of N blocks drops from N blocks' activations to N
 * inputs plus one block's activations, for one more forward pass of compute. Random draws are
 * replayed (the default generator and the module's dropout generators are rewound), as torch's
 * `preserve_rng_state`. Outside a gradient computation it just calls `fn`.
 *
 * `fn` must be a function of `inputs`, the given parameters and constants only (tensors it closes
 * over must still be alive when the backward pass runs, so pass per-call tensors as inputs).
 *
 * @example
 * ```ts
 * h = checkpoint((x) => layer.call(x), [h], { module: layer });
 * ```
 */
export function checkpoint(
  fn: (...inputs: tf.Tensor[]) => tf.Tensor,
  inputs: tf.Tensor[],
  options: CheckpointOptions = {},
): tf.Tensor {
  if (!isRecordingGradients()) return fn(...inputs);
  const params = [...new Set([...(options.module?.trainableParameters() ?? []), ...(options.parameters ?? [])])].filter(
    (p) => p.trainable,
  );
  const generators = new Set<Generator>([defaultRng()]);
  if (options.module)
    for (const [, m] of options.module.namedModules())
      if (m instanceof Dropout && m.generator) generators.add(m.generator);
  const states = [...generators].map((g) => [g, g.getState()] as const);
  const n = inputs.length;
  const run = tf.customGrad(((...args: unknown[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const xs = args.slice(0, n) as tf.Tensor[];
    save(xs);
    return {
      // runs with the tape off (tfjs runs a custom op's forward that way): nothing of it is kept
      value: fn(...xs),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const now = states.map(([g]) => [g, g.getState()] as const);
        for (const [g, s] of states) g.setState(s);
        try {
          const { value, grads } = gradientsOf(() => fn(...saved), [...saved, ...params], dy);
          value.dispose();
          return grads.map((g, i) => g ?? tf.zerosLike(i < n ? (saved[i] as tf.Tensor) : (params[i - n] as tf.Tensor)));
        } finally {
          for (const [g, s] of now) g.setState(s);
        }
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...t: tf.Tensor[]) => tf.Tensor;
  return run(...inputs, ...params);
}
