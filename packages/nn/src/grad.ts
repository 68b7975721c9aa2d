import * as tf from '@tensorflow/tfjs-core';

/**
 * The parts of tfjs-core's engine that a backward pass needs and its public API does not expose:
 * the tape that `startTape` / `endTape` record while a function runs (tfjs-core 4.x).
 */
interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
  saved?: tf.Tensor[];
}

interface EngineInternals {
  state: {
    activeTape: TapeNode[] | null;
    gradientDepth: number;
    kernelDepth: number;
    registeredVariables: Record<string, tf.Variable>;
  };
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(name: string, fn: () => T): T;
}

/**
 * Saved inputs that tfjs's gradient functions read only the shape of (the position in `saved`, or
 * 'all'): Reshape keeps its input and Add both of its inputs alive until the backward pass just to
 * know their shapes, which for a transformer is most of the activation memory. The tape below keeps
 * a shape record in their place and frees the tensor at once.
 */
const SHAPE_ONLY: Record<string, number[] | 'all'> = {
  Reshape: [0],
  Add: [0, 1],
  Sub: [0, 1],
  Slice: [0],
  Sum: [0],
  Mean: [0],
  PadV2: [0],
  ExpandDims: [0],
  Concat: 'all',
  GatherV2: [0],
};

/** A tape that frees, as each op is recorded, the saved tensors its gradient needs only the shape of. */
class LeanTape extends Array<TapeNode> {
  override push(...nodes: TapeNode[]): number {
    for (const node of nodes) {
      const which = SHAPE_ONLY[node.kernelName];
      const saved = node.saved;
      if (!which || !saved) continue;
      // the gradient closure holds this same array: replace in place
      for (let i = 0; i < saved.length; i++) {
        if (which !== 'all' && !which.includes(i)) continue;
        const t = saved[i] as tf.Tensor;
        saved[i] = { shape: t.shape, rank: t.rank, dtype: t.dtype, size: t.size } as unknown as tf.Tensor;
        t.dispose();
      }
    }
    return super.push(...nodes);
  }
}

const isTensor = (t: unknown): t is tf.Tensor => t instanceof tf.Tensor;

function engine(): EngineInternals {
  return tf.engine() as unknown as EngineInternals;
}

/** True while a gradient computation is recording operations (inside `variableGrads`, `tf.grad`, …). */
export function isRecordingGradients(): boolean {
  return engine().state.gradientDepth > 0;
}

/**
 * The tape nodes on a path from one of `xs` to `y`, in recording order, each with its inputs
 * narrowed to those that depend on an `x` (the only ones a gradient is needed for).
 */
function nodesBetween(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const reachedFromX = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      reachedFromX.add(node.id);
      for (const o of node.outputs) fromX.add(o.id);
    }
  }
  const toY = new Set([y.id]);
  const reachesY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i] as TapeNode;
    if (node.outputs.some((o) => toY.has(o.id))) {
      reachesY.add(node.id);
      for (const t of Object.values(node.inputs)) toY.add(t.id);
    }
  }
  const out: TapeNode[] = [];
  for (const node of tape) {
    if (!reachedFromX.has(node.id) || !reachesY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const [name, t] of Object.entries(node.inputs)) if (fromX.has(t.id)) inputs[name] = t;
    out.push({ ...node, inputs });
  }
  return out;
}

/**
 * Gradients of `f()` with respect to `xs` (scaled by `dy`, default ones), computed from tfjs's
 * tape like `tf.grads`, but with the memory a long backward pass needs: each intermediate gradient
 * is freed as soon as the op that produced its tensor has been differentiated, and each op's saved
 * activations right after its gradient ran (tfjs keeps both until the whole backward pass ends), and
 * no gradient is computed for an op input that does not depend on an `x` (a frozen weight).
 * Returns `null` for an `x` that `f` does not depend on. The caller owns `value` and the gradients.
 *
 * Runs inside another gradient computation's backward pass too (gradient checkpointing does); inside
 * a recording one (higher-order gradients) it defers to `tf.grads`' engine.
 */
export function gradientsOf(
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy?: tf.Tensor,
): { value: tf.Tensor; grads: (tf.Tensor | null)[] } {
  const e = engine();
  if (e.state.gradientDepth > 0) {
    // higher-order: tfjs's own engine records the backward pass too
    const { value, grads } = tf.engine().gradients(f, xs, dy, true);
    return { value, grads: grads.map((g) => g ?? null) };
  }
  const outer = e.state.activeTape; // a backward pass this one runs inside keeps its own tape
  let y: tf.Tensor;
  let tape: TapeNode[];
  e.startTape();
  e.state.activeTape = new LeanTape();
  try {
    y = e.tidy('forward', f);
  } finally {
    e.endTape();
    tape = e.state.activeTape ?? [];
    e.state.activeTape = outer;
  }
  if (!(y instanceof tf.Tensor)) throw new Error('gradientsOf: the function must return a tensor');
  try {
    const grads = e.tidy(
      'backward',
      () => backward(nodesBetween(tape, xs, y), xs, y, dy) as unknown as tf.TensorContainer,
    ) as unknown as (tf.Tensor | null)[];
    return { value: y, grads };
  } finally {
    for (const node of tape) for (const t of node.saved ?? []) if (isTensor(t)) t.dispose();
  }
}

function backward(nodes: TapeNode[], xs: tf.Tensor[], y: tf.Tensor, dy?: tf.Tensor): (tf.Tensor | null)[] {
  const grad = new Map<number, tf.Tensor>();
  grad.set(y.id, dy ? tf.clone(dy) : tf.onesLike(y));
  const wanted = new Set(xs.map((x) => x.id));
  for (let i = nodes.length - 1; i >= 0; i--) {
    const node = nodes[i] as TapeNode;
    const dys = node.outputs.map((o) => grad.get(o.id) ?? null);
    if (dys.every((d) => d === null)) {
      // no gradient reached this op's outputs: it contributes nothing
      for (const t of node.saved ?? []) if (isTensor(t)) t.dispose();
      continue;
    }
    if (!node.gradient) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
    const names = Object.keys(node.inputs);
    // tensors freed below or handed out twice must not become a gradient as they are
    const own = new Set<tf.Tensor>([...(dys.filter(Boolean) as tf.Tensor[]), ...(node.saved ?? []).filter(isTensor)]);
    // Only the inputs that depend on an x; anything else the gradient function made is freed here.
    const dxs = tf.tidy(() => {
      const fns = (node.gradient as NonNullable<TapeNode['gradient']>)(dys);
      return names.map((name) => {
        const fn = fns[name];
        if (!fn)
          throw new Error(`Cannot backprop through input ${name}. Available gradients found: ${Object.keys(fns)}.`);
        const dx = fn();
        // an identity's gradient is its dy, which is freed below: hand on a copy (sharing the data)
        if (own.has(dx)) return tf.clone(dx);
        own.add(dx);
        return dx;
      });
    });
    names.forEach((name, j) => {
      const x = node.inputs[name] as tf.Tensor;
      const dx = dxs[j] as tf.Tensor;
      if (dx.dtype !== 'float32')
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`,
        );
      if (dx.shape.join(',') !== x.shape.join(','))
        throw new Error(
          `Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`,
        );
      const prev = grad.get(x.id);
      if (prev) {
        grad.set(x.id, tf.add(prev, dx));
        prev.dispose();
        dx.dispose();
      } else grad.set(x.id, dx);
    });
    // every consumer of this op's outputs came later on the tape and is done: their gradients are complete and used
    for (const o of node.outputs) {
      if (wanted.has(o.id)) continue;
      grad.get(o.id)?.dispose();
      grad.delete(o.id);
    }
    for (const t of node.saved ?? []) if (isTensor(t)) t.dispose();
  }
  const out = xs.map((x) => grad.get(x.id) ?? null);
  for (const [id, t] of grad) if (!wanted.has(id)) t.dispose();
  return out;
}

/**
 * The value of `f()` and its gradients with respect to the trainable variables in `varList`
 * (default: every trainable variable), keyed by variable name — `tf.variableGrads`' contract with
 * {@link gradientsOf}'s memory use: long backward passes (a 135M-parameter model at a few thousand
 * tokens) keep only the activations still ahead of them, and frozen weights get no weight gradient.
 *
 * @example
 * ```ts
 * const { value, grads } = variableGrads(() => model.forward(ids, { labels: ids }).loss as tf.Scalar, model.trainableParameters());
 * optimizer.step(grads);
 * tf.dispose([value, ...Object.values(grads)]);
 * ```
 */
export function variableGrads(
  f: () => tf.Scalar,
  varList?: tf.Variable[],
): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
  const vars = (varList ?? Object.values(engine().state.registeredVariables)).filter((v) => v.trainable);
  if (vars.length === 0)
    throw new Error('variableGrads: no trainable variables; pass some, or set trainable (requiresGrad) on them');
  const { value, grads } = gradientsOf(f, vars);
  if (value.rank !== 0) {
    value.dispose();
    for (const g of grads) g?.dispose();
    throw new Error(`variableGrads: the function must return a scalar, got shape [${value.shape.join(', ')}]`);
  }
  if (grads.every((g) => g === null)) {
    value.dispose();
    throw new Error(
      'Cannot find a connection between any variable and the result of the loss function y=f(x). Please make sure the operations that use variables are inside the function f passed to minimize().',
    );
  }
  const named: Record<string, tf.Tensor> = {};
  vars.forEach((v, i) => {
    const g = grads[i];
    if (g) named[v.name] = g;
  });
  return { value: value as tf.Scalar, grads: named };
}
