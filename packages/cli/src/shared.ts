import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { AdapterFileError, loraConfigFromJson } from '@lora/core';
import { FileAccessError, initBackend } from '@lora/tensor';
import {
  type OutputInput,
  type OutputKind,
  type PreparedOutput,
  loadSafetensors,
  prepareOutput,
} from '@lora/tensor/node';

/** Where the command writes: stdout for results, stderr for progress and errors. */
export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  /** `--verbose`: say which backend started and why the others did not. */
  verbose?: boolean;
}

/** One `lora` sub-command: its usage line for `lora --help`, its own help, and what it does. */
export interface Command {
  name: string;
  /** One or two lines for the main help: the usage and what it does. */
  usage: string;
  help: string;
  run: (args: string[], io: Io) => Promise<number>;
}

/** A mistake in how the command was called: exit code 2, one line on stderr. */
export class UsageError extends Error {}

/**
 * Starts a CPU-side backend: merging is memory-bound, so a GPU adds nothing, and probing one costs
 * time and noise. LORA_BACKEND chooses; otherwise tensorflow (tfjs-node) when installed, then wasm, then cpu.
 */
export async function startBackend(io?: Io): Promise<void> {
  const chosen = process.env.LORA_BACKEND;
  if (chosen) {
    const info = await initBackend(chosen as 'cpu');
    if (io?.verbose) io.err(`backend ${info.name} (${info.adapter}), chosen by LORA_BACKEND`);
    return;
  }
  const skipped: string[] = [];
  for (const name of ['tensorflow', 'wasm', 'cpu'] as const) {
    try {
      const info = await initBackend(name);
      if (io?.verbose)
        io.err(`backend ${info.name} (${info.adapter})${skipped.length ? `; skipped ${skipped.join('; ')}` : ''}`);
      return;
    } catch (e) {
      skipped.push(`${name}: ${(e as Error).message}`);
    }
  }
  throw new Error(`no backend could start (${skipped.join('; ')}); install @tensorflow/tfjs-backend-cpu`);
}

/**
 * node:util's parseArgs, with its errors as UsageError and one thing it gets wrong for us: a value that
 * starts with '-' (`--weights -0.5,1`, a negative number) is taken as the option's value, not as an
 * unknown flag.
 */
export function parseCommandArgs<T extends ParseArgsConfig & { args: string[] }>(
  config: T,
): ReturnType<typeof parseArgs<T>> {
  const { args, options = {} } = config;
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const name = a.startsWith('--') && !a.includes('=') ? a.slice(2) : undefined;
    const next = args[i + 1];
    if (name && options[name]?.type === 'string' && next !== undefined && /^-[\d.]/.test(next)) {
      joined.push(`${a}=${next}`);
      i++;
    } else joined.push(a);
  }
  try {
    return parseArgs({ ...config, args: joined });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) throw new UsageError((e as Error).message);
    throw e;
  }
}

export async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() ?? false;
}

/** What every writing command's help says about `--out` and `--force`. */
export const OUTPUT_HELP = `Output: --out must not exist (an empty directory counts as absent) unless --force is given, and
--force replaces only an output of the same kind that lora could have written (a directory holding
other files is refused, naming them). --out may not be, contain or lie inside an input, nor be the
current directory, the home directory or /. The output is written beside --out under a hidden
temporary name (.<out>.<pid>.<hex>.tmp) and renamed into place, the old one removed last: a run that
fails or is interrupted (Ctrl-C, SIGTERM) leaves the old output as it was and removes its temporaries;
after a kill (SIGKILL, power cut) the next run writing to --out removes them, and restores the old
output if the kill came between the two renames of a directory replace. Writability and free space
are checked before the work starts.`;

/**
 * Prepares `--out` for a command (see {@link OUTPUT_HELP}): the checks run, the temporary folder
 * exists, and nothing else has been done; commit or abort the result.
 */
export function prepareOut(
  out: string,
  options: { kind: OutputKind; force?: boolean; inputs: OutputInput[]; bytesNeeded?: number },
  io: Io,
): Promise<PreparedOutput> {
  return prepareOutput(out, {
    ...options,
    label: '--out',
    forceHint: 'pass --force',
    warn: (m) => io.err(`note: ${m}`),
  });
}

/** Bytes a file or directory (recursively) holds; 0 when it does not exist. */
export async function sizeOf(path: string): Promise<number> {
  const s = await lstat(path).catch(() => null);
  if (!s) return 0;
  if (!s.isDirectory()) return s.size;
  let total = 0;
  for (const e of await readdir(path)) total += await sizeOf(join(path, e));
  return total;
}

/**
 * Reads an adapter directory: its config (warnings on stderr) and tensors. Every failure names the file:
 * missing files, invalid JSON, fields of the wrong type, malformed safetensors.
 */
export async function readAdapter(dir: string, name?: string, io?: Io) {
  const root = name && name !== 'default' ? join(dir, name) : dir;
  const configPath = join(root, 'adapter_config.json');
  const weightsPath = join(root, 'adapter_model.safetensors');
  if (!(await stat(configPath).catch(() => null)))
    throw new UsageError(
      `${root}: no adapter_config.json (is it a PEFT adapter directory? use --adapter-name for a sub-folder)`,
    );
  let json: unknown;
  try {
    json = JSON.parse(await readFile(configPath, 'utf8'));
  } catch (e) {
    if (e instanceof SyntaxError) throw new AdapterFileError(configPath, `is not valid JSON (${e.message})`);
    throw FileAccessError.from(configPath, e);
  }
  const config = loraConfigFromJson(json as Record<string, unknown>, {
    file: configPath,
    warn: (m) => io?.err(`warning: ${m}`),
  });
  if (!(await stat(weightsPath).catch(() => null))) throw new UsageError(`${root}: no adapter_model.safetensors`);
  const { tensors } = await loadSafetensors(weightsPath);
  return { config, tensors, root, file: weightsPath };
}

export type AdapterOnDisk = Awaited<ReturnType<typeof readAdapter>>;

/** A number from an option, checked: `what` names the option in the error. */
export function numberOption(
  value: string | undefined,
  what: string,
  check: (n: number) => boolean,
  expected: string,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !check(n)) throw new UsageError(`${what} ${JSON.stringify(value)} is not ${expected}`);
  return n;
}
