/** True under Node (not in a browser or a web worker). */
export function isNode(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string' && typeof (globalThis as { window?: unknown }).window === 'undefined';
}

/**
 * Imports an optional peer dependency by name. The specifier is a variable so that bundlers
 * leave the import alone: a browser bundle that wants a backend imports it itself.
 * Resolves to `null` when the package is not installed; rethrows any other failure.
 */
export async function importOptional<T>(specifier: string): Promise<T | null> {
  try {
    return (await import(/* @vite-ignore */ /* webpackIgnore: true */ specifier)) as T;
  } catch (e) {
    const code = (e as { code?: string }).code;
    const message = String((e as Error).message ?? e);
    if (
      code === 'ERR_MODULE_NOT_FOUND' ||
      code === 'MODULE_NOT_FOUND' ||
      /Cannot find (package|module)|Failed to resolve|Could not resolve/.test(message)
    ) {
      if (message.includes(specifier)) return null;
    }
    throw e;
  }
}
