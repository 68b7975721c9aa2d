import * as tf from '@tensorflow/tfjs-core';

/**
 * A trainable (or frozen) tensor owned by a module: a tf.Variable whose `trainable` flag plays the
 * part of PyTorch's `requires_grad`.
 */
export type Parameter = tf.Variable;

/** A handle returned by hook registration; `remove()` detaches the hook. */
export interface RemovableHandle {
  remove(): void;
}

/** Runs before `forward`; may return replacement arguments. */
export type ForwardPreHook = (module: Module, args: unknown[]) => unknown[] | undefined;
/** Runs after `forward`; may return a replacement output. */
export type ForwardHook = (module: Module, args: unknown[], output: unknown) => unknown;

/** What {@link Module.loadStateDict} reports, as PyTorch's `load_state_dict`. */
export interface LoadStateDictResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

let variableCounter = 0;

/** Makes a parameter from a tensor, taking ownership of it (the tensor is disposed). */
export function makeParameter(value: tf.Tensor, trainable = true): Parameter {
  const v = tf.variable(value, trainable, `lora_param_${variableCounter++}`);
  value.dispose();
  return v;
}

/**
 * The base of every layer and model: named children, parameters and buffers in PyTorch's
 * naming (`layers.0.self_attn.q_proj.weight`), train/eval mode, state dicts, forward hooks.
 * Subclasses register what they own in their constructor and implement `forward`; callers use
 * `call(...)`, which runs the hooks around `forward`.
 *
 * @example
 * ```ts
 * class Mlp extends Module {
 *   up = this.registerModule('up', new Linear(16, 64));
 *   down = this.registerModule('down', new Linear(64, 16));
 *   forward(x: tf.Tensor) { return this.down.call(tf.relu(this.up.call(x))); }
 * }
 * const m = new Mlp();
 * console.log([...m.namedParameters()].map(([n]) => n)); // ['up.weight', 'up.bias', 'down.weight', 'down.bias']
 * ```
 */
export abstract class Module {
  /** True in training mode (dropout active), as PyTorch's `module.training`. */
  training = true;
  private readonly params = new Map<string, Parameter | null>();
  private readonly buffers = new Map<string, { tensor: tf.Tensor | null; persistent: boolean }>();
  private readonly children = new Map<string, Module | null>();
  private readonly preHooks = new Map<number, ForwardPreHook>();
  private readonly hooks = new Map<number, ForwardHook>();
  private hookId = 0;

  abstract forward(...args: never[]): unknown;

  /**
   * Runs forward pre-hooks, `forward`, then forward hooks, as calling a torch module does. Typed
   * loosely on purpose (as `nn.Module.__call__`): subclasses' `forward` signatures vary, hooks may
   * replace arguments and outputs.
   */
  // biome-ignore lint/suspicious/noExplicitAny: a module's output type is its forward's, which hooks may replace
  call(...args: unknown[]): any {
    let a = args;
    for (const hook of this.preHooks.values()) {
      const replaced = hook(this, a);
      if (replaced !== undefined) a = replaced;
    }
    let out = (this.forward as (...x: unknown[]) => unknown)(...a);
    for (const hook of this.hooks.values()) {
      const replaced = hook(this, a, out);
      if (replaced !== undefined) out = replaced;
    }
    return out;
  }

  /**
   * Adds a hook that runs before `forward` (PyTorch's `register_forward_pre_hook`).
   *
   * @example
   * ```ts
   * const h = layer.registerForwardPreHook((_m, [x]) => { seen.push(x as tf.Tensor); return undefined; });
   * h.remove();
   * ```
   */
  registerForwardPreHook(hook: ForwardPreHook): RemovableHandle {
    const id = this.hookId++;
    this.preHooks.set(id, hook);
    return { remove: () => void this.preHooks.delete(id) };
  }

  /**
   * Adds a hook that runs after `forward` (PyTorch's `register_forward_hook`).
   *
   * @example
   * ```ts
   * const h = layer.registerForwardHook((_m, _args, out) => { outputs.push(out); return undefined; });
   * ```
   */
  registerForwardHook(hook: ForwardHook): RemovableHandle {
    const id = this.hookId++;
    this.hooks.set(id, hook);
    return { remove: () => void this.hooks.delete(id) };
  }

  /** True when forward hooks or pre-hooks are registered on this module (fused paths that skip `call` must not skip them). */
  get hasForwardHooks(): boolean {
    return this.hooks.size > 0 || this.preHooks.size > 0;
  }

  private checkName(name: string, kind: string): void {
    if (name.length === 0 || name.includes('.'))
      throw new Error(`${kind} name '${name}' must be non-empty and contain no '.'`);
    if (this.params.has(name) || this.buffers.has(name) || this.children.has(name)) {
      throw new Error(
        `${kind} name '${name}' is already used in ${this.constructor.name}; each attribute name must be unique`,
      );
    }
  }

  /** Registers a parameter (taking ownership of the tensor), or a placeholder when null. */
  protected registerParameter(name: string, value: tf.Tensor | Parameter | null, trainable = true): Parameter {
    this.checkName(name, 'parameter');
    const p = value === null ? null : value instanceof tf.Variable ? value : makeParameter(value, trainable);
    this.params.set(name, p);
    return p as Parameter;
  }

  /** Registers a buffer: state that is not trained (e.g. RoPE tables). Non-persistent buffers stay out of state dicts. */
  protected registerBuffer(name: string, value: tf.Tensor | null, persistent = true): tf.Tensor {
    this.checkName(name, 'buffer');
    if (value) tf.keep(value);
    this.buffers.set(name, { tensor: value, persistent });
    return value as tf.Tensor;
  }

  /** Registers a child module under `name`. */
  protected registerModule<M extends Module | null>(name: string, module: M): M {
    this.checkName(name, 'module');
    this.children.set(name, module);
    return module;
  }

  /** Unregisters a parameter (it is not disposed) and returns it. */
  protected removeParameter(name: string): Parameter | null {
    const p = this.params.get(name) ?? null;
    this.params.delete(name);
    return p;
  }

  /** Unregisters a child module (it is not disposed). */
  protected removeModule(name: string): Module | null {
    const m = this.children.get(name) ?? null;
    this.children.delete(name);
    return m;
  }

  /** The parameter registered as `name`, or undefined. */
  getParameter(name: string): Parameter | null | undefined {
    return this.params.get(name);
  }

  /** Replaces a registered parameter (the old one is disposed unless `dispose` is false). */
  setParameter(
    name: string,
    value: Parameter | tf.Tensor,
    options: { trainable?: boolean; dispose?: boolean } = {},
  ): Parameter {
    if (!this.params.has(name)) throw new Error(`${this.constructor.name} has no parameter '${name}'`);
    const old = this.params.get(name);
    const p = value instanceof tf.Variable ? value : makeParameter(value, options.trainable ?? old?.trainable ?? true);
    if (old && old !== p && options.dispose !== false) old.dispose();
    this.params.set(name, p);
    // Layers keep typed fields for their parameters (`linear.weight`): keep those pointing at the new one.
    if (old)
      for (const key of Object.keys(this))
        if ((this as unknown as Record<string, unknown>)[key] === old)
          (this as unknown as Record<string, unknown>)[key] = p;
    return p;
  }

  /**
   * Replaces the value of a registered buffer (the old tensor is disposed, the new one kept), e.g. a
   * cache a layer refreshes; `null` empties it.
   */
  protected setBuffer(name: string, value: tf.Tensor | null): void {
    const b = this.buffers.get(name);
    if (!b) throw new Error(`${this.constructor.name} has no buffer '${name}'`);
    if (b.tensor && b.tensor !== value) b.tensor.dispose();
    if (value) tf.keep(value);
    b.tensor = value;
  }

  /** The buffer registered as `name`, or undefined. */
  getBuffer(name: string): tf.Tensor | null | undefined {
    return this.buffers.get(name)?.tensor;
  }

  /** Direct children, in registration order (PyTorch's `named_children`). */
  *namedChildren(): IterableIterator<[string, Module]> {
    for (const [name, m] of this.children) if (m) yield [name, m];
  }

  /** This module and every descendant with its dotted path, this one first as '' (PyTorch's `named_modules`). */
  *namedModules(prefix = '', seen = new Set<Module>()): IterableIterator<[string, Module]> {
    if (seen.has(this)) return;
    seen.add(this);
    yield [prefix, this];
    for (const [name, m] of this.children) {
      if (m) yield* m.namedModules(prefix ? `${prefix}.${name}` : name, seen);
    }
  }

  /** Every parameter with its dotted path, each once (PyTorch's `named_parameters`). */
  *namedParameters(prefix = '', recurse = true): IterableIterator<[string, Parameter]> {
    const seen = new Set<Parameter>();
    const modules = recurse ? this.namedModules(prefix) : ([[prefix, this]] as Iterable<[string, Module]>);
    for (const [path, m] of modules) {
      for (const [name, p] of m.params) {
        if (p && !seen.has(p)) {
          seen.add(p);
          yield [path ? `${path}.${name}` : name, p];
        }
      }
    }
  }

  /** Every buffer with its dotted path (PyTorch's `named_buffers`). */
  *namedBuffers(prefix = ''): IterableIterator<[string, tf.Tensor, boolean]> {
    for (const [path, m] of this.namedModules(prefix)) {
      for (const [name, b] of m.buffers) if (b.tensor) yield [path ? `${path}.${name}` : name, b.tensor, b.persistent];
    }
  }

  /** All parameters. */
  parameters(): Parameter[] {
    return [...this.namedParameters()].map(([, p]) => p);
  }

  /** The parameters an optimizer should update (`trainable`, PyTorch's `requires_grad`). */
  trainableParameters(): Parameter[] {
    return this.parameters().filter((p) => p.trainable);
  }

  /** Sets `trainable` on every parameter (PyTorch's `requires_grad_`). */
  requiresGrad(trainable = true): this {
    for (const p of this.parameters()) p.trainable = trainable;
    return this;
  }

  /**
   * The module at a dotted path (PyTorch's `get_submodule`); '' is this module.
   *
   * @example
   * ```ts
   * const q = model.getSubmodule('model.layers.0.self_attn.q_proj');
   * ```
   */
  getSubmodule(target: string): Module {
    if (target === '') return this;
    let m: Module = this;
    const walked: string[] = [];
    for (const part of target.split('.')) {
      const next = m.children.get(part);
      if (!next) {
        throw new Error(
          `${walked.length ? walked.join('.') : 'the root module'} (${m.constructor.name}) has no submodule '${part}' (looking for '${target}'); children are: ${[...m.children.keys()].join(', ') || 'none'}`,
        );
      }
      walked.push(part);
      m = next;
    }
    return m;
  }

  /** Replaces the module at a dotted path (PyTorch's `set_submodule`), returning the one it replaced. */
  setSubmodule(target: string, module: Module): Module {
    const dot = target.lastIndexOf('.');
    const parent = dot < 0 ? this : this.getSubmodule(target.slice(0, dot));
    const name = target.slice(dot + 1);
    const old = parent.children.get(name);
    if (!old) throw new Error(`cannot set '${target}': ${parent.constructor.name} has no submodule '${name}'`);
    parent.children.set(name, module);
    // Subclasses keep typed fields for their children; keep those pointing at the new module.
    for (const key of Object.keys(parent))
      if ((parent as unknown as Record<string, unknown>)[key] === old)
        (parent as unknown as Record<string, unknown>)[key] = module;
    return old;
  }

  /** Training mode on or off, for this module and all descendants (PyTorch's `train`). */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  /** Evaluation mode (PyTorch's `eval`). */
  eval(): this {
    return this.train(false);
  }

  /**
   * Parameters and persistent buffers by dotted name (PyTorch's `state_dict`). The tensors are the
   * module's own: read or copy them, do not dispose them.
   */
  stateDict(): Record<string, tf.Tensor> {
    const out: Record<string, tf.Tensor> = {};
    for (const [name, p] of this.namedParameters()) out[name] = p;
    for (const [name, b, persistent] of this.namedBuffers()) if (persistent) out[name] = b;
    return out;
  }

  /**
   * Copies values into parameters and persistent buffers by name (PyTorch's `load_state_dict`).
   * With `strict` (default), missing or unexpected keys are an error; a shape mismatch always is.
   * Nothing is changed when it fails. The given tensors are not disposed.
   *
   * @example
   * ```ts
   * const { missingKeys } = model.loadStateDict(tensors, { strict: false });
   * ```
   */
  loadStateDict(stateDict: Record<string, tf.Tensor>, options: { strict?: boolean } = {}): LoadStateDictResult {
    const strict = options.strict ?? true;
    const own = new Map<
      string,
      { kind: 'param'; p: Parameter } | { kind: 'buffer'; owner: Module; key: string; t: tf.Tensor }
    >();
    for (const [name, p] of this.namedParameters()) own.set(name, { kind: 'param', p });
    for (const [path, m] of this.namedModules()) {
      for (const [key, b] of m.buffers)
        if (b.tensor && b.persistent)
          own.set(path ? `${path}.${key}` : key, { kind: 'buffer', owner: m, key, t: b.tensor });
    }
    const missingKeys = [...own.keys()].filter((k) => !(k in stateDict));
    const unexpectedKeys = Object.keys(stateDict).filter((k) => !own.has(k));
    const mismatched: string[] = [];
    for (const [k, t] of Object.entries(stateDict)) {
      const target = own.get(k);
      if (!target) continue;
      const shape = target.kind === 'param' ? target.p.shape : target.t.shape;
      if (shape.join(',') !== t.shape.join(',')) {
        mismatched.push(
          `size mismatch for ${k}: copying a param with shape [${t.shape.join(', ')}] from checkpoint, the shape in current model is [${shape.join(', ')}]`,
        );
      }
    }
    const errors = [...mismatched];
    if (strict && missingKeys.length)
      errors.push(`Missing key(s) in state_dict: ${missingKeys.map((k) => `"${k}"`).join(', ')}`);
    if (strict && unexpectedKeys.length)
      errors.push(`Unexpected key(s) in state_dict: ${unexpectedKeys.map((k) => `"${k}"`).join(', ')}`);
    if (errors.length)
      throw new Error(`Error(s) in loading state_dict for ${this.constructor.name}:\n\t${errors.join('\n\t')}`);
    for (const [k, t] of Object.entries(stateDict)) {
      const target = own.get(k);
      if (!target) continue;
      // assign shares the data (reference-counted): the caller may dispose its tensor afterwards.
      if (target.kind === 'param')
        tf.tidy(() => target.p.assign(t.dtype === target.p.dtype ? t : tf.cast(t, target.p.dtype)));
      else {
        const copy = tf.keep(tf.clone(t.dtype === target.t.dtype ? t : tf.cast(t, target.t.dtype)));
        target.t.dispose();
        target.owner.buffers.set(target.key, { tensor: copy, persistent: true });
      }
    }
    return { missingKeys, unexpectedKeys };
  }

  /** Frees every parameter and buffer of this module and its descendants. */
  dispose(): void {
    for (const [, m] of this.namedModules()) {
      for (const p of m.params.values()) p?.dispose();
      for (const b of m.buffers.values()) b.tensor?.dispose();
      m.params.clear();
      m.buffers.clear();
    }
  }
}
