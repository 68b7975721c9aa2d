import * as tf from '@tensorflow/tfjs-core';
import type { ArrowConfig, TunerLayer } from '@lora/core';
import { inPlaceWriteCount } from '@lora/kernels';
import { Module, ModuleDict } from '@lora/nn';
import { ArrowError } from './errors';
import { type PrototypeMethod, exactPrototypes, powerIterationPrototypes } from './prototypes';

/** The name `createArrowModel` gives the router adapter (PEFT's). */
export const ARROW_ROUTER = 'arrow_router';
/** PEFT names general adapters `gks_<i>`; such names are never task experts. */
const GKS_NAME = /^gks_\d+$/;

/**
 * The task experts of a layer, as PEFT's `on_adapter_change` counts them: every adapter on it but the
 * routers (`arrow_router`, and any adapter with a router of its own) and the general adapters
 * (`gks_<digits>`), in the order they were added.
 */
export function taskExperts(layer: TunerLayer): string[] {
  const routers = layer.variantModules<ArrowRouter>('lora_arrow');
  return [...layer.settings.keys()].filter((n) => n !== ARROW_ROUTER && !routers.has(n) && !GKS_NAME.test(n));
}

/** An expert's Aᵀ and Bᵀ (non-persistent buffers), with the data they were made from. */
class KeptTransposes extends Module {
  private readonly from: [tf.DataId, tf.DataId];
  private readonly at: number;

  constructor(a: tf.Variable, b: tf.Variable, writes: number) {
    super();
    this.from = [a.dataId, b.dataId];
    this.at = writes;
    tf.tidy(() => {
      this.registerBuffer('a', tf.transpose(a), false);
      this.registerBuffer('b', tf.transpose(b), false);
    });
  }

  madeFrom(a: tf.Variable, b: tf.Variable, writes: number): boolean {
    return this.from[0] === a.dataId && this.from[1] === b.dataId && this.at === writes;
  }

  get tensors(): { a: tf.Tensor; b: tf.Tensor } {
    return { a: this.getBuffer('a') as tf.Tensor, b: this.getBuffer('b') as tf.Tensor };
  }

  forward(): never {
    throw new Error('kept transposes are read, not called');
  }
}

/** The same names, whatever their order. */
function sameSet(a: string[], b: string[]): boolean {
  return a.length === b.length && [...a].sort().join('\0') === [...b].sort().join('\0');
}

/**
 * An Arrow router's state on one layer (PEFT's `ArrowLoraLinearLayer`, in the layer's `lora_arrow`
 * dictionary under the router adapter's name): the routing settings, the task experts and general
 * adapters it combines, and the prototypes, a non-persistent buffer built on first use and built
 * again when experts are added or removed. GenKnowSub (when `useGks`) is applied once to each task
 * expert, before its prototype is computed: the general adapters' averaged A and averaged B are
 * subtracted from its A and B, in place, as PEFT does.
 *
 * Found through `arrowRouters(model)`; read-only apart from {@link prototypeMethod}.
 */
export class ArrowRouter extends Module {
  readonly topK: number;
  readonly routerTemperature: number;
  readonly useGks: boolean;
  readonly rngSeed: number | null;
  /** The task experts routed over, in order (a prototype each). */
  taskAdapterNames: string[];
  /** The general adapters GenKnowSub averages. */
  readonly gksAdapterNames: string[];
  /** How prototypes are computed (see {@link PrototypeMethod}); changing it invalidates them. */
  private method: PrototypeMethod = 'power-iteration';
  /** How many expert prototypes were computed so far (PEFT's test counts calls of its power iteration). */
  prototypeBuilds = 0;
  /**
   * Whether routed forwards add up how much each expert was used (see {@link usage}): off by default;
   * on, each forward adds a few small ops, and no read back.
   */
  recordUsage = false;
  private usageTokens = 0;
  private ready = false;
  /** The A factors GenKnowSub has been applied to (a replaced adapter has a new one, and gets it again). */
  private readonly subtracted = new WeakSet<tf.Variable>();
  /** Stacked factors for the gathered kernel, with the data they were stacked from (webgpu only). */
  private stackedFrom: tf.DataId[] = [];
  private stackedAt = -1;
  /**
   * The task experts' factor variables on the layer, looked up once after each change of its adapters
   * (a layer replaces an adapter's variables only through updateLayer/deleteAdapter, which call
   * {@link onAdapterChange}); checked to fit together once. Per forward, nothing then costs O(experts)
   * in JavaScript: 64 experts' lookups and shape checks were a tenth of a decode step.
   */
  private factorCache: { a: tf.Variable[]; b: tf.Variable[]; checked: boolean } | null = null;
  private readonly transposes = this.registerModule('transposes', new ModuleDict<KeptTransposes>());

  constructor(config: ArrowConfig, taskAdapterNames: string[]) {
    super();
    this.topK = config.topK;
    this.routerTemperature = config.routerTemperature;
    this.useGks = config.useGks;
    this.rngSeed = config.rngSeed;
    this.taskAdapterNames = [...taskAdapterNames];
    this.gksAdapterNames = [...(config.gksAdapterNames ?? [])];
    this.registerBuffer('prototypes', null, false);
    this.registerBuffer('stacked_a', null, false);
    this.registerBuffer('stacked_b', null, false);
    this.registerBuffer('usage', null, false);
  }

  /** The prototypes `[E, in]` (one unit row per task expert), or null until they are built. */
  get prototypes(): tf.Tensor2D | null {
    return (this.getBuffer('prototypes') as tf.Tensor2D | null | undefined) ?? null;
  }

  get prototypeMethod(): PrototypeMethod {
    return this.method;
  }

  set prototypeMethod(method: PrototypeMethod) {
    if (method !== 'power-iteration' && method !== 'exact')
      throw new ArrowError(
        'prototypes',
        `prototypes must be 'power-iteration' or 'exact', got ${JSON.stringify(method)}`,
      );
    if (method !== this.method) this.invalidate();
    this.method = method;
  }

  /** Whether the prototypes are built for the current experts. */
  get prototypesReady(): boolean {
    return this.ready;
  }

  /** Drops the prototypes (and stacked factors): they are built again on the next routed forward. */
  invalidate(): void {
    this.ready = false;
    this.setBuffer('prototypes', null);
    this.dropStacks();
  }

  private dropStacks(): void {
    this.setBuffer('stacked_a', null);
    this.setBuffer('stacked_b', null);
    this.stackedFrom = [];
    this.stackedAt = -1;
  }

  /**
   * PEFT's `on_adapter_change`: when the layer's task experts differ from the router's, they become
   * the router's and the prototypes are invalidated (GenKnowSub reaches new experts on the next
   * forward). Unlike PEFT, removing an expert counts too.
   */
  onAdapterChange(layer: TunerLayer): void {
    this.factorCache = null;
    const now = taskExperts(layer);
    if (sameSet(now, this.taskAdapterNames) && now.every((n) => layer.settings.has(n))) return;
    this.taskAdapterNames = now;
    this.invalidate();
    this.dropTransposes();
    this.resetUsage();
  }

  /**
   * Adds one routed forward's use of each expert (when {@link recordUsage}): the coefficient weight
   * it received, summed over tokens, and the (token, slot) pairs routed to it.
   */
  addUsage(indices: tf.Tensor2D, coefficients: tf.Tensor2D): void {
    if (!this.recordUsage) return;
    const e = this.taskAdapterNames.length;
    const step = tf.tidy(() => {
      const hot = tf.oneHot(indices, e); // [T, k, E]
      const weight = tf.sum(tf.mul(hot, tf.expandDims(coefficients, 2)), [0, 1]);
      const slots = tf.sum(hot, [0, 1]);
      const now = tf.stack([weight, tf.cast(slots, 'float32')]);
      const old = this.getBuffer('usage');
      return old ? tf.add(old, now) : now;
    });
    this.setBuffer('usage', step);
    this.usageTokens += indices.shape[0];
  }

  /**
   * How much each expert was used since {@link recordUsage} was turned on (or the experts last
   * changed, or {@link resetUsage}): `weight[e]`, the routing coefficients it received summed over the
   * tokens (they sum to `tokens` over the experts), and `slots[e]`, the tokens routed through it.
   */
  async usage(): Promise<{ names: string[]; weight: number[]; slots: number[]; tokens: number }> {
    const names = [...this.taskAdapterNames];
    const u = this.getBuffer('usage');
    const v = u ? Array.from(await u.data()) : new Array<number>(2 * names.length).fill(0);
    return { names, weight: v.slice(0, names.length), slots: v.slice(names.length), tokens: this.usageTokens };
  }

  resetUsage(): void {
    this.setBuffer('usage', null);
    this.usageTokens = 0;
  }

  /**
   * Checks that the experts on `layer` fit together (the same factor shapes), as the routed forward
   * needs; names the first that does not.
   */
  private checkExperts(layer: TunerLayer, where: string): void {
    const names = this.taskAdapterNames;
    if (names.length === 0)
      throw new ArrowError(
        'no-task-adapters',
        `the Arrow router on ${where} has no task experts left (every adapter on the layer is a router or a general adapter gks_<i>); load task adapters, or set another adapter active`,
        { module: where },
      );
    if (this.topK > names.length)
      throw new ArrowError(
        'top-k',
        `top_k is ${this.topK} but the Arrow router on ${where} has ${names.length} task expert${names.length === 1 ? '' : 's'} (${names.join(', ')}); PEFT fails here in torch.topk. Route over at most ${names.length} (arrowConfig.topK), or add experts`,
        { module: where },
      );
    if (this.factorCache?.checked) return;
    const gks = this.useGks ? this.gksAdapterNames.filter((g) => layer.settings.has(g)) : [];
    const ref = names[0] as string;
    const shape = (n: string) => `A [${layer.factorA(n).shape.join(', ')}], B [${layer.factorB(n).shape.join(', ')}]`;
    for (const n of [...names.slice(1), ...gks])
      if (shape(n) !== shape(ref))
        throw new ArrowError(
          layer.factorA(n).shape[0] === layer.factorA(ref).shape[0] ? 'shape' : 'rank',
          `[${n}] ${layer.factorA(n).shape[0] === layer.factorA(ref).shape[0] ? 'shape' : 'rank'} mismatch on ${where}: ${shape(n)}, but ${ref} has ${shape(ref)}; every expert an Arrow router combines must have the same rank and shapes (delete ${n} or load one of rank ${layer.factorA(ref).shape[0]})`,
          { adapter: n, module: where },
        );
    this.factors(layer).checked = true;
  }

  /** The task experts' A and B variables on `layer`, in {@link taskAdapterNames} order (see factorCache). */
  factors(layer: TunerLayer): { a: tf.Variable[]; b: tf.Variable[]; checked: boolean } {
    this.factorCache ??= {
      a: this.taskAdapterNames.map((n) => layer.factorA(n)),
      b: this.taskAdapterNames.map((n) => layer.factorB(n)),
      checked: false,
    };
    return this.factorCache;
  }

  /**
   * PEFT's `gen_know_sub`: the general adapters' A and B, averaged element-wise, subtracted from the
   * A and B of every task expert not yet reduced. (PEFT subtracts the average of the factors, not of
   * the ΔW: the expert becomes (B−B̄)(A−Ā).)
   */
  private applyGks(layer: TunerLayer, where: string): void {
    if (!this.useGks) return;
    const own = this.factors(layer).a;
    const pending = this.taskAdapterNames.filter((_, i) => !this.subtracted.has(own[i] as tf.Variable));
    if (pending.length === 0) return;
    const general = this.gksAdapterNames.filter((n) => layer.settings.has(n));
    if (general.length === 0)
      throw new ArrowError(
        'no-general-adapters',
        `GenKnowSub (use_gks) on ${where} needs the general adapters ${this.gksAdapterNames.join(', ') || '(none were given)'}, and none of them is on the layer; load them again, or make the Arrow model with useGks false`,
        { module: where },
      );
    tf.tidy(() => {
      const meanOf = (f: (n: string) => tf.Variable) => tf.mean(tf.stack(general.map(f)), 0);
      const avgA = meanOf((n) => layer.factorA(n));
      const avgB = meanOf((n) => layer.factorB(n));
      for (const n of pending) {
        layer.factorA(n).assign(tf.sub(layer.factorA(n), avgA));
        layer.factorB(n).assign(tf.sub(layer.factorB(n), avgB));
      }
    });
    for (const n of pending) this.subtracted.add(layer.factorA(n));
  }

  private setPrototypes(p: tf.Tensor2D): void {
    this.setBuffer('prototypes', p);
    this.prototypeBuilds += this.taskAdapterNames.length;
    this.ready = true;
  }

  /**
   * GenKnowSub and the prototypes, where not done yet: what the routed forward runs first (PEFT's
   * forward runs `gen_know_sub` then `build_prototypes`). Exact prototypes read the factors back
   * synchronously, which webgpu cannot: there, {@link prepareAsync} builds them.
   */
  prepare(layer: TunerLayer, where: string): void {
    this.checkExperts(layer, where);
    this.applyGks(layer, where);
    if (this.ready) return;
    const names = this.taskAdapterNames;
    if (this.method === 'power-iteration') {
      const p = powerIterationPrototypes(
        names.map((n) => layer.factorA(n)),
        names.map((n) => layer.factorB(n)),
        this.rngSeed,
      );
      this.setPrototypes(p);
      return;
    }
    if (tf.getBackend() === 'webgpu')
      throw new ArrowError(
        'prototypes',
        `exact prototypes read the experts' factors back, which webgpu cannot do during a forward pass: after adding or removing experts on ${where}, run await buildArrowPrototypes(model) before the next forward (createArrowModel does it), or use prototypes: 'power-iteration'`,
        { module: where },
      );
    this.setPrototypes(
      this.exact(
        layer,
        names.map((n) => ({ a: layer.factorA(n).dataSync(), b: layer.factorB(n).dataSync() })),
      ),
    );
  }

  /** {@link prepare} with the factors read asynchronously (any backend, webgpu included). */
  async prepareAsync(layer: TunerLayer, where: string): Promise<void> {
    this.checkExperts(layer, where);
    this.applyGks(layer, where);
    if (this.ready) return;
    if (this.method === 'power-iteration') return this.prepare(layer, where);
    const names = this.taskAdapterNames;
    const factors = await Promise.all(
      names.map(async (n) => ({ a: await layer.factorA(n).data(), b: await layer.factorB(n).data() })),
    );
    this.setPrototypes(this.exact(layer, factors));
  }

  private exact(layer: TunerLayer, factors: { a: ArrayLike<number>; b: ArrayLike<number> }[]): tf.Tensor2D {
    const ref = this.taskAdapterNames[0] as string;
    const [r, inF] = layer.factorA(ref).shape as [number, number];
    const outF = layer.factorB(ref).shape[0] as number;
    return exactPrototypes(factors, r, inF, outF);
  }

  /**
   * The task experts' factors stacked (`[E, r, in]` and `[E, out, r]`) for the gathered kernel, made
   * again when any expert's factors were written since (an optimizer step, GenKnowSub, a load: a new
   * `dataId`, or an in-place AdamW step anywhere): PEFT stacks them on every call, so a routed forward
   * always sees the current weights. Whoever writes a factor's buffer some other way calls
   * {@link invalidate}.
   */
  stackedFactors(layer: TunerLayer): { a: tf.Tensor3D; b: tf.Tensor3D } {
    const f = this.factors(layer);
    const ids = [...f.a, ...f.b].map((v) => v.dataId);
    const a = this.getBuffer('stacked_a') as tf.Tensor3D | null;
    const b = this.getBuffer('stacked_b') as tf.Tensor3D | null;
    const writes = inPlaceWriteCount();
    if (
      a &&
      b &&
      writes === this.stackedAt &&
      ids.length === this.stackedFrom.length &&
      ids.every((id, i) => id === this.stackedFrom[i])
    )
      return { a, b };
    this.setBuffer('stacked_a', tf.stack(f.a));
    this.setBuffer('stacked_b', tf.stack(f.b));
    this.stackedFrom = ids;
    this.stackedAt = writes;
    return { a: this.getBuffer('stacked_a') as tf.Tensor3D, b: this.getBuffer('stacked_b') as tf.Tensor3D };
  }

  /**
   * Aᵀ ([in, r]) and Bᵀ ([r, out]) of task expert `name`, kept between forwards and made again when the
   * factors were written since (as {@link stackedFactors}): matMul's transpose flags are ~13× slower on
   * wasm, and transposing every expert on every call costs two ops each. Kept as buffers of a child
   * module, so that they are freed with the layer.
   */
  transposedFactors(layer: TunerLayer, name: string): { a: tf.Tensor; b: tf.Tensor } {
    const writes = inPlaceWriteCount();
    const f = this.factors(layer);
    const i = this.taskAdapterNames.indexOf(name);
    const a = f.a[i] ?? layer.factorA(name);
    const b = f.b[i] ?? layer.factorB(name);
    const kept = this.transposes.has(name) ? this.transposes.get(name) : null;
    if (kept?.madeFrom(a, b, writes)) return kept.tensors;
    if (kept) this.transposes.delete(name)?.dispose();
    const fresh = new KeptTransposes(a, b, writes);
    this.transposes.set(name, fresh);
    return fresh.tensors;
  }

  /** Frees the kept transposes of adapters that are no longer task experts here. */
  private dropTransposes(): void {
    for (const n of [...this.transposes.keys()])
      if (!this.taskAdapterNames.includes(n)) this.transposes.delete(n)?.dispose();
  }

  forward(): never {
    throw new Error('an ArrowRouter runs inside its LoRA layer (the Arrow variant); call the layer');
  }
}
