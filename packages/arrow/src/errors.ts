/** What an {@link ArrowError} is about. */
export type ArrowErrorCode =
  /** No task adapter was given. */
  | 'no-task-adapters'
  /** `useGks` without general adapters (or with none left on a layer). */
  | 'no-general-adapters'
  /** Two experts of different ranks on a module. */
  | 'rank'
  /** Two experts whose factors on a module have different shapes. */
  | 'shape'
  /** Two experts adapting different modules. */
  | 'targets'
  /** An expert on a layer that is not Linear-like (an Embedding, a convolution). */
  | 'layer-type'
  /** An expert whose forward Arrow cannot route (DoRA, a lora_B bias). */
  | 'expert-kind'
  /** More experts per token than a layer has. */
  | 'top-k'
  /** Exact prototypes asked for where they cannot be computed synchronously (webgpu). */
  | 'prototypes';

/**
 * An Arrow model cannot be made or run as asked: experts that do not fit together, a non-Linear
 * target, more experts per token than there are. The message names the adapters, the module and the
 * fix; `adapter` and `module` say where, when one is at fault. PEFT raises `ValueError` (ranks,
 * shapes, targets) and `TypeError` (non-Linear targets) for these; its wording starts the message
 * where it has one.
 *
 * @example
 * ```ts
 * try {
 *   await createArrowModel(base, ['experts/a', 'experts/b-rank8'], { topK: 1 });
 * } catch (e) {
 *   if (e instanceof ArrowError && e.code === 'rank') console.error(e.adapter, e.module, e.message);
 * }
 * ```
 */
export class ArrowError extends Error {
  override readonly name = 'ArrowError';
  readonly code: ArrowErrorCode;
  /** The adapter at fault (`task_1`), when one is. */
  readonly adapter: string | undefined;
  /** The module path at fault, when one is. */
  readonly module: string | undefined;

  constructor(code: ArrowErrorCode, message: string, where: { adapter?: string; module?: string } = {}) {
    super(message);
    this.code = code;
    this.adapter = where.adapter;
    this.module = where.module;
  }
}
