/**
 * The one writer behind every output @lora writes in Node (`lora merge`, `lora combine`, `saveAdapter`
 * and the commands to come). Its promises:
 *
 * - an existing output is replaced only when asked (`force`), only when it is recognisably the same kind
 *   of output (a file or directory lora could have written: it never removes a file it did not write),
 *   and never when it is, contains or lies inside an input, the current directory, the home directory
 *   or the root;
 * - the new output is written beside the final path under a private temporary name and published by
 *   renames (a file replaces a file in one rename; a directory: the old one moved aside, the new one
 *   renamed in, the old one removed last), so that a kill at any moment leaves the complete old output
 *   or the complete new one;
 * - temporaries are removed on error and on SIGINT/SIGTERM/SIGHUP (handlers are registered only while
 *   a write is in flight), and the next write to the same path removes those of killed runs (dead PID)
 *   and restores an old output a killed run had moved aside;
 * - writability and free space are checked before the work starts.
 */
import { randomBytes } from 'node:crypto';
import { type Stats, existsSync, renameSync, rmSync, rmdirSync } from 'node:fs';
import { cp, lstat, mkdir, open, readdir, realpath, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, join, parse, resolve, sep } from 'node:path';

/** Why {@link prepareOutput} (or a commit) refused or failed. */
export type OutputErrorCode =
  /** The output exists and `force` was not given. */
  | 'exists'
  /** The existing output holds files lora did not write, or is not the kind of output being written. */
  | 'foreign'
  /** The output is, contains or lies inside one of the inputs. */
  | 'overlap'
  /** The output is the root, the home directory, the current directory or contains one of them. */
  | 'unsafe-path'
  /** The output's folder cannot be created or written (permissions, read-only disk, a file in the way). */
  | 'not-writable'
  /** Not enough free space for the new output beside the old one. */
  | 'no-space'
  /** A signal arrived while the output was being written; nothing was published. */
  | 'interrupted';

/**
 * An output cannot be written where it was asked for. `code` says why (see {@link OutputErrorCode});
 * `path` is the output as given. Nothing was written or removed when it is thrown.
 *
 * @example
 * ```ts
 * try { await saveAdapter(peft, 'out/adapter'); } catch (e) {
 *   if (e instanceof OutputError && e.code === 'exists') await saveAdapter(peft, 'out/adapter', { force: true });
 * }
 * ```
 */
export class OutputError extends Error {
  override readonly name = 'OutputError';
  readonly code: OutputErrorCode;
  readonly path: string;

  constructor(code: OutputErrorCode, path: string, message: string) {
    super(message);
    this.code = code;
    this.path = path;
  }
}

/**
 * What an output is: a file or a directory, and how to tell whether an existing one is the same kind
 * of output (so that `force` may replace it).
 */
export interface OutputKind {
  type: 'file' | 'directory';
  /** For messages: "a safetensors file", "a PEFT adapter directory". */
  description: string;
  /**
   * Why the existing entry at `path` (of the right type) may not be replaced, as a phrase that follows
   * the path ("holds notes.txt, which …"), or null when it may.
   */
  refuse(path: string): Promise<string | null>;
  /** Entries of a replaced directory carried into the new output when the new output lacks them. */
  keep?: readonly string[];
}

/** An input of the work: the output may not be, contain or lie inside it. */
export type OutputInput = string | { path: string; label?: string };

/** Options of {@link prepareOutput} and {@link writeOutput}. */
export interface OutputOptions {
  kind: OutputKind;
  /** Replace an existing output of the same kind (default false: an existing output is an error). */
  force?: boolean;
  /** Paths read while the output is written. */
  inputs?: readonly OutputInput[];
  /** Bytes the new output needs (checked against the free space before the work starts). */
  bytesNeeded?: number;
  /** How messages name the output (default "the output"; the CLI passes "--out"). */
  label?: string;
  /** How messages say to force a replace (default "pass { force: true }"; the CLI passes "pass --force"). */
  forceHint?: string;
  /**
   * Flush the files and folders to the disk before publishing (default true), so that a power cut
   * cannot leave an empty file where the old output was.
   */
  durable?: boolean;
  /** Where notes on recovered leftovers of killed runs go (default console.warn). */
  warn?: (message: string) => void;
}

/** An output being written; see {@link prepareOutput}. */
export interface PreparedOutput {
  /** The final path, absolute. */
  readonly path: string;
  /**
   * Where to write: a path beside the final one under a private temporary folder. For a directory
   * kind it exists (empty); for a file kind, create the file there.
   */
  readonly target: string;
  /** Whether an existing output will be replaced at commit. */
  readonly replaces: boolean;
  /** The signal that interrupted this write (its temporaries are gone; commit will fail), or null. */
  readonly interrupted: NodeJS.Signals | null;
  /** Checks the free space once the size is known (an {@link OutputError} 'no-space' when short). */
  ensureSpace(bytes: number): Promise<void>;
  /** Publishes `target` at `path` (replacing the old output by renames) and removes the temporaries. */
  commit(): Promise<void>;
  /** Removes everything written so far; the old output stays as it was. Safe to call more than once. */
  abort(): Promise<void>;
  /**
   * The error to report for `e`, thrown while writing into `target`: a signal's interruption, or a
   * file-system failure there (disk full, permissions), as an {@link OutputError} naming the output
   * rather than the hidden temporary path; any other error as it is.
   */
  explain(e: unknown): Promise<unknown>;
}

const TEMP = /^(\d+)\.([0-9a-f]{8})\.(tmp|old)$/;

/**
 * A fresh temporary name beside `path` (same folder, so that a rename onto `path` is atomic), of the
 * naming {@link removeStaleTemporaries} recognises: `.<name>.<pid>.<8 hex>.tmp` (or `.old` for an old
 * output moved aside).
 */
export function temporaryPathFor(path: string, suffix: 'tmp' | 'old' = 'tmp'): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.${suffix}`);
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: the process exists, under another user
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Cleans up after writes to `path` that were killed (their PID no longer runs): removes their
 * temporaries, and when `path` is missing, restores the old output such a write had moved aside
 * (removing other moved-aside copies). Returns what it did, one line per action.
 *
 * @example
 * ```ts
 * for (const line of await removeStaleTemporaries('merged')) console.warn(line);
 * ```
 */
export async function removeStaleTemporaries(path: string): Promise<string[]> {
  const dir = dirname(resolve(path));
  const name = basename(resolve(path));
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return [];
  }
  const prefix = `.${name}.`;
  const olds: string[] = [];
  const temps: string[] = [];
  for (const e of entries) {
    if (!e.startsWith(prefix)) continue;
    const m = TEMP.exec(e.slice(prefix.length));
    if (!m || isAlive(Number(m[1]))) continue;
    (m[3] === 'old' ? olds : temps).push(e);
  }
  const done: string[] = [];
  if (olds.length && !(await lstat(join(dir, name)).catch(() => null))) {
    // the newest moved-aside copy is the output as it was before the last killed replace
    const times = await Promise.all(olds.map(async (o) => (await lstat(join(dir, o)).catch(() => null))?.mtimeMs ?? 0));
    const newest = olds[times.indexOf(Math.max(...times))] as string;
    try {
      await rename(join(dir, newest), join(dir, name));
      olds.splice(olds.indexOf(newest), 1);
      done.push(`restored ${join(dir, name)}: a run killed while replacing it had left it as ${newest}`);
    } catch {
      // another process restored it first
    }
  }
  for (const e of [...olds, ...temps]) await rm(join(dir, e), { recursive: true, force: true }).catch(() => undefined);
  if (olds.length + temps.length)
    done.push(`removed ${olds.length + temps.length} temporary file(s) left beside ${join(dir, name)} by killed runs`);
  return done;
}

// ---- signals: every write in flight registers a synchronous cleanup ----

interface InFlight {
  cleanup(): void;
  interrupted: NodeJS.Signals | null;
}

const inFlight = new Set<InFlight>();
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function onSignal(signal: NodeJS.Signals): void {
  for (const f of inFlight) {
    f.interrupted = signal;
    try {
      f.cleanup();
    } catch {
      // best effort: the next run removes what is left
    }
  }
  inFlight.clear();
  for (const s of SIGNALS) process.off(s, onSignal);
  // Nobody else handles it: die of the signal, as the process would have without us (exit status 128+n).
  // Otherwise the program's own handler decides; the interrupted writes fail with 'interrupted'.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

/**
 * Removes `path` now, from a signal handler: file operations the program had already started (in
 * libuv's thread pool) may still add entries while it is removed, so it is removed until it stays gone.
 */
function removeNow(path: string): void {
  for (let i = 0; i < 10 && existsSync(path); i++) {
    try {
      rmSync(path, { recursive: true, force: true, maxRetries: 3, retryDelay: 5 });
    } catch {
      // an entry appeared under it meanwhile: try again
    }
  }
}

function track(f: InFlight): void {
  inFlight.add(f);
  if (inFlight.size === 1) for (const s of SIGNALS) process.on(s, onSignal);
}

function untrack(f: InFlight): void {
  if (!inFlight.delete(f)) return;
  if (inFlight.size === 0) for (const s of SIGNALS) process.off(s, onSignal);
}

/**
 * Runs `write(tmp)` for a temporary path beside `path` and renames the result onto `path`; the
 * temporary is removed on error and on SIGINT/SIGTERM. Stale temporaries of killed runs are removed first.
 */
export async function withTemporaryFile<T>(path: string, write: (tmp: string) => Promise<T>): Promise<T> {
  await removeStaleTemporaries(path);
  const tmp = temporaryPathFor(path);
  const flight: InFlight = { cleanup: () => removeNow(tmp), interrupted: null };
  track(flight);
  try {
    const result = await write(tmp);
    if (flight.interrupted)
      throw new OutputError('interrupted', path, `writing ${path} was interrupted by ${flight.interrupted}`);
    await rename(tmp, path);
    return result;
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  } finally {
    untrack(flight);
  }
}

// ---- kinds ----

const ADAPTER_FILES = new Set(['adapter_config.json', 'adapter_model.safetensors', 'adapter_model.bin', 'README.md']);

/** Names of a directory's entries that `owns` rejects, as "name" or "name/" (and "sub/name" one level down). */
async function foreignEntries(
  dir: string,
  owns: (name: string, isDir: boolean) => boolean | 'descend',
  inner?: (name: string, isDir: boolean) => boolean,
): Promise<string[]> {
  const foreign: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const isDir = e.isDirectory();
    const verdict = e.isSymbolicLink() ? false : owns(e.name, isDir);
    if (verdict === 'descend' && inner) {
      for (const f of await readdir(join(dir, e.name), { withFileTypes: true }))
        if (f.isSymbolicLink() || !inner(f.name, f.isDirectory()))
          foreign.push(`${e.name}/${f.name}${f.isDirectory() ? '/' : ''}`);
    } else if (!verdict) foreign.push(`${e.name}${isDir ? '/' : ''}`);
  }
  return foreign.sort();
}

function listFew(names: string[]): string {
  const shown = names.slice(0, 4).join(', ');
  return names.length > 4 ? `${shown} and ${names.length - 4} more` : shown;
}

function foreignPhrase(names: string[], what: string): string | null {
  if (names.length === 0) return null;
  return `holds ${listFew(names)}, which ${names.length === 1 ? 'is' : 'are'} not part of ${what}`;
}

/** Kinds of output @lora writes. */
export const outputKinds = {
  /** One `.safetensors` file; an existing file is replaced only when it is a valid safetensors file. */
  safetensorsFile: {
    type: 'file',
    description: 'a safetensors file',
    async refuse(path: string) {
      const file = await open(path, 'r');
      try {
        const { size } = await file.stat();
        const prefix = Buffer.alloc(9);
        await file.read(prefix, 0, 9, 0);
        const length = size >= 9 ? Number(prefix.readBigUInt64LE(0)) : -1;
        // the 8-byte header length, then a JSON object that fits in the file
        if (length > 1 && 8 + length <= size && prefix[8] === 0x7b) return null;
        return 'is not a safetensors file';
      } finally {
        await file.close();
      }
    },
  } satisfies OutputKind,
  /**
   * A PEFT adapter directory: adapter_config.json, adapter_model.safetensors (or .bin), README.md
   * (PEFT's model card, carried into the new output), and sub-folders holding the same for PEFT's
   * non-default adapters.
   */
  adapterDirectory: {
    type: 'directory',
    description: 'a PEFT adapter directory',
    keep: ['README.md'],
    async refuse(path: string) {
      const names = await foreignEntries(
        path,
        (n, isDir) => (isDir ? 'descend' : ADAPTER_FILES.has(n)),
        (n, isDir) => !isDir && ADAPTER_FILES.has(n),
      );
      return foreignPhrase(names, 'a PEFT adapter directory');
    },
  } satisfies OutputKind,
  /**
   * A Hugging Face model directory: `*.safetensors` weights and their index, config.json and
   * generation_config.json, tokenizer files, and the entries named in `alsoOwns` (what the new
   * output will hold besides the weights, e.g. the files `lora merge` copies from the base).
   */
  modelDirectory(options: { alsoOwns?: readonly string[] } = {}): OutputKind {
    const also = new Set(options.alsoOwns ?? []);
    return {
      type: 'directory',
      description: 'a model directory',
      async refuse(path: string) {
        const names = await foreignEntries(
          path,
          (n, isDir) => also.has(n) || (!isDir && (/\.safetensors(\.index\.json)?$/.test(n) || MODEL_FILES.has(n))),
        );
        return foreignPhrase(names, 'a model directory');
      },
    };
  },
};

const MODEL_FILES = new Set([
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'vocab.json',
  'vocab.txt',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
  'preprocessor_config.json',
]);

// ---- checks ----

function formatBytes(n: number): string {
  if (n < 2 ** 20) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  if (n < 2 ** 30) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${(n / 2 ** 30).toFixed(2)} GiB`;
}

/** Resolves symbolic links in the part of `abs` that exists (the rest may not exist yet). */
async function realPathOf(abs: string): Promise<string> {
  let head = abs;
  const tail: string[] = [];
  for (;;) {
    try {
      return join(await realpath(head), ...tail);
    } catch {
      const up = dirname(head);
      if (up === head) return abs;
      tail.unshift(basename(head));
      head = up;
    }
  }
}

const inside = (child: string, parent: string) =>
  child !== parent && child.startsWith(parent.endsWith(sep) ? parent : parent + sep);

async function checkPlaces(shown: string, given: string, real: string, inputs: readonly OutputInput[]): Promise<void> {
  const cwd = await realPathOf(process.cwd());
  const home = await realPathOf(homedir());
  if (real === parse(real).root)
    throw new OutputError('unsafe-path', given, `${shown} is the root of the file system; write into a new directory`);
  if (real === cwd)
    throw new OutputError(
      'unsafe-path',
      given,
      `${shown} is the current directory; write into a new sub-directory instead (e.g. ${join(given, 'out')})`,
    );
  if (inside(cwd, real))
    throw new OutputError('unsafe-path', given, `${shown} contains the current directory (${cwd}); write elsewhere`);
  if (real === home || inside(home, real))
    throw new OutputError(
      'unsafe-path',
      given,
      `${shown} ${real === home ? 'is' : 'contains'} the home directory (${home}); write into a new directory`,
    );
  for (const input of inputs) {
    const p = typeof input === 'string' ? input : input.path;
    const label = typeof input === 'string' ? p : `${input.label ?? 'the input'} ${p}`;
    const r = await realPathOf(resolve(p));
    if (r === real)
      throw new OutputError(
        'overlap',
        given,
        `${shown} is ${label}: write the output somewhere else (the input is read while the output is written)`,
      );
    if (inside(r, real))
      throw new OutputError(
        'overlap',
        given,
        `${shown} contains ${label}: replacing it would remove the input; write the output somewhere else`,
      );
    if (inside(real, r))
      throw new OutputError('overlap', given, `${shown} is inside ${label}: write the output outside the input`);
  }
}

/** The first existing ancestor of `dir` that is not a directory, if any. */
async function fileInTheWay(dir: string): Promise<string | null> {
  for (let d = dir; ; d = dirname(d)) {
    const s = await stat(d).catch(() => null);
    if (s) return s.isDirectory() ? null : d;
    if (dirname(d) === d) return null;
  }
}

/** An {@link OutputError} for a failed write near `given`, naming the output instead of a temporary path. */
async function writeError(e: unknown, shown: string, given: string, folder: string): Promise<OutputError | unknown> {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return new OutputError(
        'not-writable',
        given,
        `${shown}: cannot write in ${folder} (permission denied); choose a folder you can write to`,
      );
    case 'EROFS':
      return new OutputError(
        'not-writable',
        given,
        `${shown}: ${folder} is on a read-only file system; choose a writable disk`,
      );
    case 'ENOTDIR': {
      const file = await fileInTheWay(folder);
      return new OutputError(
        'not-writable',
        given,
        `${shown}: ${file ?? folder} is a file, not a directory; choose another path`,
      );
    }
    case 'ENOSPC':
    case 'EDQUOT':
      return new OutputError(
        'no-space',
        given,
        `${shown}: the disk holding ${folder} is full (${code}); free some space or choose another disk`,
      );
    default:
      return e;
  }
}

async function freeBytes(dir: string): Promise<number | null> {
  try {
    const s = await statfs(dir);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

/** Creates the missing ancestors of `dir`, recording each in `created` (outermost first) as soon as it exists. */
async function makeParents(dir: string, created: string[]): Promise<void> {
  const missing: string[] = [];
  for (let d = dir; !(await lstat(d).catch(() => null)); d = dirname(d)) {
    missing.unshift(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing) {
    created.push(d);
    await mkdir(d);
  }
}

function removeEmptySync(dirs: string[]): void {
  for (const d of [...dirs].reverse()) {
    try {
      rmdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      return; // not empty any more (someone else wrote there): leave it and its parents
    }
  }
}

/** fsyncs every file and folder under `path` (a power cut after the rename then finds complete files). */
async function syncTree(path: string): Promise<void> {
  const s = await lstat(path);
  if (s.isDirectory()) for (const e of await readdir(path)) await syncTree(join(path, e));
  if (!s.isFile() && !s.isDirectory()) return;
  const h = await open(path, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  const h = await open(dir, 'r').catch(() => null);
  await h?.sync().catch(() => undefined);
  await h?.close();
}

function kindMismatch(existing: Stats, kind: OutputKind): string | null {
  if (existing.isSymbolicLink()) return 'is a symbolic link; pass the path it points to, or remove the link';
  if (kind.type === 'directory' && !existing.isDirectory())
    return `is not a directory; the output is ${kind.description}`;
  if (kind.type === 'file' && !existing.isFile()) return `is not a file; the output is ${kind.description}`;
  return null;
}

/**
 * Checks where an output may go and sets up its private temporary folder, before any work is done:
 * refuses an existing output unless `force` (an empty directory counts as absent), refuses one that
 * is not the same kind of output even with `force` (naming a few of the foreign files), refuses an
 * output that is, contains or lies inside an input, the current or home directory, or the root;
 * removes temporaries of killed runs and restores an old output one of them had moved aside; creates
 * missing parent folders; checks writability and (with `bytesNeeded`) free space. Write into
 * `target`, then `commit()`; on failure `abort()` (or use {@link writeOutput}, which does both).
 * SIGINT, SIGTERM and SIGHUP remove the temporaries while the output is in flight.
 *
 * @example
 * ```ts
 * import { outputKinds, prepareOutput } from '@lora/tensor/node';
 * const out = await prepareOutput('merged', { kind: outputKinds.modelDirectory(), inputs: ['base'], force: true });
 * try {
 *   await writeFile(join(out.target, 'config.json'), '{}');
 *   await out.commit();
 * } finally {
 *   await out.abort(); // a no-op after commit
 * }
 * ```
 */
export async function prepareOutput(path: string, options: OutputOptions): Promise<PreparedOutput> {
  const { kind } = options;
  const label = options.label ?? 'the output';
  const forceHint = options.forceHint ?? 'pass { force: true }';
  const warn = options.warn ?? console.warn;
  const durable = options.durable ?? true;
  const shown = `${label} ${path}`;
  if (path.trim() === '') throw new OutputError('unsafe-path', path, `${label} is empty; give a path to write to`);
  const abs = resolve(path);
  const parent = dirname(abs);
  await checkPlaces(shown, path, await realPathOf(abs), options.inputs ?? []);
  for (const line of await removeStaleTemporaries(abs)) warn(line);

  const existing = await lstat(abs).catch(() => null);
  let replaces = false;
  if (existing) {
    const mismatch = kindMismatch(existing, kind);
    if (mismatch) throw new OutputError('foreign', path, `${shown} ${mismatch}`);
    const empty = existing.isDirectory() && (await readdir(abs)).length === 0;
    if (!empty && !options.force)
      throw new OutputError('exists', path, `${shown} exists; choose a new path or ${forceHint} to replace it`);
    const why = empty ? null : await kind.refuse(abs);
    if (why)
      throw new OutputError(
        'foreign',
        path,
        `${shown} ${why}: lora replaces only ${kind.description} it could have written, even when forced; move those files away or choose another path`,
      );
    replaces = true;
  }

  const staging = temporaryPathFor(abs);
  const target = join(staging, basename(abs));
  /** Parent folders this write created, outermost first (removed again on failure when empty). */
  const created: string[] = [];
  let done = false;
  const flight: InFlight = {
    cleanup: () => {
      removeNow(staging);
      removeEmptySync(created);
    },
    interrupted: null,
  };
  const abort = async () => {
    if (done) return;
    done = true;
    untrack(flight);
    await rm(staging, { recursive: true, force: true }).catch(() => undefined);
    removeEmptySync(created);
  };
  const ensureSpace = async (bytes: number) => {
    const free = await freeBytes(parent);
    if (free !== null && free < bytes)
      throw new OutputError(
        'no-space',
        path,
        `${shown} needs about ${formatBytes(bytes)} in ${parent}${replaces ? ' (the new output is complete before the old one is removed)' : ''}, and only ${formatBytes(free)} is free; free some space or choose another disk`,
      );
  };
  // tracked before the first folder is made: a signal at any later moment finds the cleanup registered
  track(flight);
  try {
    await makeParents(parent, created);
    await mkdir(staging);
  } catch (e) {
    await abort();
    throw await writeError(e, shown, path, parent);
  }
  try {
    if (kind.type === 'directory') await mkdir(target);
    if (options.bytesNeeded !== undefined) await ensureSpace(options.bytesNeeded);
  } catch (e) {
    await abort();
    throw e;
  }

  const commit = async () => {
    if (done) throw new Error(`${shown}: commit() after the output was already committed or aborted`);
    try {
      if (flight.interrupted)
        throw new OutputError(
          'interrupted',
          path,
          `${shown}: interrupted by ${flight.interrupted}; nothing was written`,
        );
      if (durable) await syncTree(staging);
      // the old output is checked again just before it goes: files added to it meanwhile are not ours
      const now = await lstat(abs).catch(() => null);
      if (now) {
        const mismatch = kindMismatch(now, kind);
        const nowEmpty = now.isDirectory() && (await readdir(abs)).length === 0;
        const why =
          mismatch ?? (nowEmpty ? null : !replaces ? 'appeared while the output was written' : await kind.refuse(abs));
        if (why) throw new OutputError(replaces ? 'foreign' : 'exists', path, `${shown} ${why}; nothing was replaced`);
        for (const k of kind.keep ?? []) {
          const from = join(abs, k);
          if ((await lstat(from).catch(() => null))?.isFile() && !(await lstat(join(target, k)).catch(() => null)))
            await cp(from, join(target, k));
        }
      }
      const aside = temporaryPathFor(abs, 'old');
      // The swap is synchronous: no signal handler or other JavaScript runs between the two renames.
      // A file replaces a file in one rename; a directory needs two, and a SIGKILL between them leaves the
      // old output at `aside`, which the next write to this path restores.
      let moved = false;
      if (now && kind.type === 'directory') {
        renameSync(abs, aside);
        moved = true;
        try {
          renameSync(target, abs);
        } catch (e) {
          renameSync(aside, abs);
          throw e;
        }
      } else renameSync(target, abs);
      done = true;
      flight.cleanup = () => {
        removeNow(staging);
        if (moved) removeNow(aside);
      };
      await rmdir(staging).catch(() => undefined);
      if (moved) await rm(aside, { recursive: true, force: true });
      if (durable) await syncDir(parent);
    } catch (e) {
      if (!done) {
        await abort();
        // a signal removed the temporary folder under the commit
        if (flight.interrupted)
          throw new OutputError(
            'interrupted',
            path,
            `${shown}: interrupted by ${flight.interrupted}; nothing was written`,
          );
        throw await writeError(e, shown, path, parent);
      }
      throw e;
    } finally {
      untrack(flight);
    }
  };
  const explain = async (e: unknown) => {
    if (e instanceof OutputError) return e;
    if (flight.interrupted)
      return new OutputError(
        'interrupted',
        path,
        `${shown}: interrupted by ${flight.interrupted}; nothing was written`,
      );
    const at = (e as NodeJS.ErrnoException | null)?.path;
    return typeof at === 'string' && at.startsWith(staging) ? writeError(e, shown, path, parent) : e;
  };
  return {
    path: abs,
    target,
    replaces,
    get interrupted() {
      return flight.interrupted;
    },
    ensureSpace,
    commit,
    abort,
    explain,
  };
}

/**
 * {@link prepareOutput}, then `fill(target)`, then commit; on any error (or a signal) everything
 * written is removed and the old output stays as it was. Returns what `fill` returns.
 *
 * @example
 * ```ts
 * import { outputKinds, writeOutput } from '@lora/tensor/node';
 * await writeOutput('mix', { kind: outputKinds.adapterDirectory, force: true, inputs: ['a', 'b'] }, async (dir) => {
 *   await writeFile(join(dir, 'adapter_config.json'), config);
 *   await writeFile(join(dir, 'adapter_model.safetensors'), weights);
 * });
 * ```
 */
export async function writeOutput<T>(
  path: string,
  options: OutputOptions,
  fill: (target: string, output: PreparedOutput) => Promise<T>,
): Promise<T> {
  const output = await prepareOutput(path, options);
  try {
    const result = await fill(output.target, output);
    await output.commit();
    return result;
  } catch (e) {
    await output.abort();
    throw await output.explain(e);
  }
}
