import type { LoraLayerKind, TunerLayer } from '../layers/tuner-layer';
import { Registry } from '../registry';
import { defaultInit, gaussianInit, noInit, resetLoraParameters } from './default-init';
import { oloraInit } from './olora-init';
import { orthogonalInit } from './orthogonal-init';
import type {
  BuiltinInit,
  InitEntry,
  LoraInitContext,
  LoraInitOptions,
  LoraInitTarget,
  LoraInitializer,
} from './init-types';
import { pissaInit } from './pissa-init';
import { LoraConfigError } from '../errors';

export type { LoraInitContext, LoraInitOptions, LoraInitTarget, LoraInitializer } from './init-types';

const BUILTINS: BuiltinInit[] = [defaultInit, noInit, gaussianInit, pissaInit, oloraInit, orthogonalInit];

const inits = new Registry<InitEntry>(
  'an initialisation',
  BUILTINS.map((e) => [e.name, e]),
);

/** Which package provides the initialisations PEFT has that `@lora/core` does not. */
const PROVIDERS: Record<string, string> = { loftq: '@lora/loftq', eva: '@lora/eva', lora_ga: '@lora/loraga' };

type Fallback = 'default' | 'unknown' | ((layer: TunerLayer) => string);

const loftqRefused = (layer: TunerLayer) =>
  `init_lora_weights='loftq' is not supported on ${layer.baseLayer.constructor.name} layers (PEFT 0.21 fails there too: LoraLayer.loftq_init() missing 1 required positional argument: 'config'); leave this layer out of target_modules`;

/** Where PEFT 0.21's Embedding and convolution layers differ from their rule for method inits. */
const PEFT_FALLBACKS: Record<string, Partial<Record<LoraLayerKind, Fallback>>> = {
  loftq: { embedding: loftqRefused, conv: loftqRefused },
  lora_ga: { conv: 'default' },
};

/** PEFT's rule for an init a layer kind has no branch for: embeddings take the default, the rest refuse it. */
const KIND_FALLBACK: Record<LoraLayerKind, Fallback> = { linear: 'unknown', embedding: 'default', conv: 'unknown' };

/**
 * Registers an initialisation under an `init_lora_weights` name. The built-in ones (`true`, `false`,
 * `'gaussian'`, `'pissa'` / `'pissa_niter_K'`, `'olora'`, `'orthogonal'`) are registered the same
 * way; `@lora/loftq`, `@lora/eva` and `@lora/loraga` register `'loftq'`, `'eva'` and `'lora_ga'`
 * when imported. A taken name is an error unless `{ override: true }`. Returns a function that takes
 * the registration back (what it overrode comes back).
 *
 * @example
 * ```ts
 * registerLoraInit('eva', (ctx) => {
 *   ctx.loraB.assign(tf.zerosLike(ctx.loraB)); // A stays as drawn until the data pass sets it
 * });
 * ```
 */
export function registerLoraInit(name: string, init: LoraInitializer, options: LoraInitOptions = {}): () => void {
  if (typeof init !== 'function')
    throw new TypeError(`registerLoraInit('${name}', init): init must be a function (ctx) => void, got ${typeof init}`);
  const matches = options.matches;
  return inits.add(
    name,
    {
      name,
      init,
      kinds: options.kinds ?? ['linear'],
      matches: (v) => typeof v === 'string' && (v === name || (matches?.(v) ?? false)),
    },
    options,
  );
}

function findEntry(value: boolean | string): InitEntry | undefined {
  if (typeof value === 'string') {
    const exact = inits.get(value);
    if (exact?.matches(value)) return exact;
  }
  return inits.values().find((e) => e.matches(value));
}

function label(value: boolean | string): string {
  return typeof value === 'string' ? `'${value}'` : String(value);
}

/** Every value init_lora_weights may take here, for errors: the registered names and the packages' ones. */
function knownValues(): string {
  const names = inits.names().map((n) => (n === 'true' || n === 'false' ? n : `'${n}'`));
  for (const [n, pkg] of Object.entries(PROVIDERS)) if (!inits.get(n)) names.push(`'${n}' (${pkg})`);
  return names.join(', ');
}

/** The error for a value nothing answers to, naming the package that provides it when one does. */
function unavailable(value: boolean | string): Error {
  const pkg = typeof value === 'string' ? PROVIDERS[value] : undefined;
  return new LoraConfigError(
    pkg
      ? `init_lora_weights='${value}' is provided by ${pkg}: npm install ${pkg} and import it before creating the LoRA model`
      : `Unknown initialization init_lora_weights=${label(value)}; known: ${knownValues()}, or a name registered with registerLoraInit`,
  );
}

/**
 * The registered initialiser for an `init_lora_weights` value, or an error naming the package that
 * provides it (or, for a value nothing answers to, the known ones).
 *
 * @example
 * ```ts
 * lookupLoraInit('pissa_niter_4');  // the PiSSA initialiser
 * lookupLoraInit('eva');            // Error: init_lora_weights='eva' is provided by @lora/eva: …
 * ```
 */
export function lookupLoraInit(value: string | boolean): LoraInitializer {
  const entry = findEntry(value);
  if (entry) return entry.init;
  throw unavailable(value);
}

/**
 * Whether a config may name this value: a registered initialisation, or one a method package
 * provides (an adapter trained with EVA loads without `@lora/eva`: loading never initialises).
 */
export function isKnownLoraInit(value: unknown): boolean {
  if (typeof value === 'boolean') return true;
  if (typeof value !== 'string') return false;
  return findEntry(value) !== undefined || value in PROVIDERS;
}

/** Known values, for a config error. */
export function knownLoraInits(): string {
  return knownValues();
}

/**
 * Runs the initialisation `settings.initLoraWeights` asks for, on one new adapter (what every LoRA
 * layer's `updateLayer` calls): the registered initialiser when it serves the layer's kind, else
 * PEFT's rule for that kind. Returns the initialiser's Promise if it has one.
 */
export function runLoraInit(target: LoraInitTarget): void | Promise<void> {
  const ctx: LoraInitContext = { ...target, resetLoraParameters: (init = true) => resetLoraParameters(target, init) };
  const value = target.settings.initLoraWeights;
  const entry = findEntry(value);
  if (entry?.kinds.includes(ctx.kind)) return entry.init(ctx);
  if (!entry && ctx.kind === 'linear') throw unavailable(value);
  const name = entry?.name ?? String(value);
  const fallback = PEFT_FALLBACKS[name]?.[ctx.kind] ?? KIND_FALLBACK[ctx.kind];
  if (fallback === 'default') return ctx.resetLoraParameters(true);
  if (typeof fallback === 'function') throw new LoraConfigError(fallback(ctx.layer));
  const base = ctx.layer.baseLayer.constructor.name;
  throw new LoraConfigError(
    ctx.kind === 'conv'
      ? `Unknown initialization init_lora_weights=${label(value)} (a ${base} takes true, false, 'gaussian' or 'lora_ga', as in PEFT)`
      : `Unknown initialization init_lora_weights=${label(value)} on a ${base} (its initialiser serves ${entry?.kinds.join(', ')} layers)`,
  );
}
