/**
 * The named registries behind the extension points (initialisations, layer variants, layer
 * dispatchers): a name is registered once, unless the new entry says `override`; the handle that
 * registering returns takes the entry back out (and puts back what it had overridden).
 */
export class Registry<T> {
  private readonly entries = new Map<string, T>();

  /** @param what how errors name an entry, e.g. "a LoRA variant". */
  constructor(
    private readonly what: string,
    builtins: [string, T][] = [],
  ) {
    for (const [name, entry] of builtins) this.entries.set(name, entry);
  }

  add(name: string, entry: T, options: { override?: boolean } = {}): () => void {
    if (typeof name !== 'string' || name.length === 0)
      throw new TypeError(`${this.what} needs a non-empty name, got ${JSON.stringify(name)}`);
    const previous = this.entries.get(name);
    if (previous !== undefined && !options.override)
      throw new Error(`${this.what} named '${name}' is already registered; pass { override: true } to replace it`);
    this.entries.set(name, entry);
    return () => {
      if (this.entries.get(name) !== entry) return;
      if (previous === undefined) this.entries.delete(name);
      else this.entries.set(name, previous);
    };
  }

  get(name: string): T | undefined {
    return this.entries.get(name);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  values(): T[] {
    return [...this.entries.values()];
  }
}
