import type * as tf from '@tensorflow/tfjs-core';
import { Module } from './module';

/**
 * A list of modules named `0`, `1`, … (PyTorch's `nn.ModuleList`), so that
 * `layers.3.mlp.up_proj` resolves as it does in PyTorch.
 *
 * @example
 * ```ts
 * const layers = new ModuleList(Array.from({ length: 4 }, () => new Linear(8, 8)));
 * layers.at(2).call(x);
 * ```
 */
export class ModuleList<M extends Module = Module> extends Module {
  private readonly items: M[] = [];

  constructor(modules: M[] = []) {
    super();
    for (const m of modules) this.append(m);
  }

  append(module: M): this {
    this.registerModule(String(this.items.length), module);
    this.items.push(module);
    return this;
  }

  /** The module at index i (negative counts from the end). */
  at(i: number): M {
    const m = this.items.at(i);
    if (!m) throw new Error(`ModuleList index ${i} is out of range (length ${this.items.length})`);
    return (this.getSubmodule(String(i < 0 ? this.items.length + i : i)) as M) ?? m;
  }

  get length(): number {
    return this.items.length;
  }

  [Symbol.iterator](): Iterator<M> {
    return this.items.map((_, i) => this.at(i))[Symbol.iterator]();
  }

  forward(): never {
    throw new Error('ModuleList is a container and has no forward; call its modules');
  }
}

/**
 * Modules by name (PyTorch's `nn.ModuleDict`).
 *
 * @example
 * ```ts
 * const heads = new ModuleDict({ a: new Linear(8, 2), b: new Linear(8, 3) });
 * heads.get('a').call(x);
 * ```
 */
export class ModuleDict<M extends Module = Module> extends Module {
  private readonly names: string[] = [];

  constructor(modules: Record<string, M> = {}) {
    super();
    for (const [k, m] of Object.entries(modules)) this.set(k, m);
  }

  set(name: string, module: M): this {
    if (this.names.includes(name)) this.setSubmodule(name, module);
    else {
      this.registerModule(name, module);
      this.names.push(name);
    }
    return this;
  }

  get(name: string): M {
    if (!this.names.includes(name))
      throw new Error(`ModuleDict has no key '${name}'; keys are: ${this.names.join(', ') || 'none'}`);
    return this.getSubmodule(name) as M;
  }

  keys(): string[] {
    return [...this.names];
  }

  has(name: string): boolean {
    return this.names.includes(name);
  }

  /** Removes the module under `name` (without disposing it) and returns it. */
  delete(name: string): M | null {
    if (!this.names.includes(name)) return null;
    this.names.splice(this.names.indexOf(name), 1);
    return this.removeModule(name) as M | null;
  }

  forward(): never {
    throw new Error('ModuleDict is a container and has no forward; call its modules');
  }
}

/**
 * Modules applied in order (PyTorch's `nn.Sequential`), named `0`, `1`, ….
 *
 * @example
 * ```ts
 * const mlp = new Sequential(new Linear(8, 32), new SiLU(), new Linear(32, 8));
 * ```
 */
export class Sequential extends Module {
  private count = 0;

  constructor(...modules: Module[]) {
    super();
    for (const m of modules) this.registerModule(String(this.count++), m);
  }

  forward(x: tf.Tensor): tf.Tensor {
    let y = x;
    for (let i = 0; i < this.count; i++) {
      const next = this.getSubmodule(String(i)).call(y) as tf.Tensor;
      if (y !== x) y.dispose();
      y = next;
    }
    return y;
  }
}

/**
 * Parameters by name (PyTorch's `nn.ParameterDict`): `<path>.<name>` in state dicts, no `.weight`.
 *
 * @example
 * ```ts
 * const d = new ParameterDict(); d.set('default', tf.zeros([4, 8]));
 * ```
 */
export class ParameterDict extends Module {
  private readonly names: string[] = [];

  set(name: string, value: tf.Tensor): tf.Variable {
    if (this.names.includes(name)) return this.setParameter(name, value);
    this.names.push(name);
    return this.registerParameter(name, value);
  }

  get(name: string): tf.Variable {
    const p = this.getParameter(name);
    if (!p) throw new Error(`ParameterDict has no key '${name}'; keys are: ${this.names.join(', ') || 'none'}`);
    return p;
  }

  has(name: string): boolean {
    return this.names.includes(name);
  }

  keys(): string[] {
    return [...this.names];
  }

  /** Removes and disposes the parameter under `name`. */
  delete(name: string): void {
    if (!this.names.includes(name)) return;
    this.names.splice(this.names.indexOf(name), 1);
    this.removeParameter(name)?.dispose();
  }

  forward(): never {
    throw new Error('ParameterDict is a container and has no forward');
  }
}
