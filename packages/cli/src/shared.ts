import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { loraConfigFromJson } from '@lora/core';
import { initBackend } from '@lora/tensor';
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
export async function startBackend(): Promise<void> {
  const chosen = process.env.LORA_BACKEND;
  if (chosen) {
    await initBackend(chosen as 'cpu');
    return;
  }
  for (const name of ['tensorflow', 'wasm', 'cpu'] as const) {
    try {
      await initBackend(name);
      return;
    } catch {
      // try the next one
    }
  }
  throw new Error('no backend could start; install @tensorflow/tfjs-backend-cpu');
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

export async function readAdapter(dir: string, name?: string) {
  const root = name && name !== 'default' ? join(dir, name) : dir;
  const configPath = join(root, 'adapter_config.json');
  const weightsPath = join(root, 'adapter_model.safetensors');
  if (!(await stat(configPath).catch(() => null)))
    throw new UsageError(
      `${root}: no adapter_config.json (is it a PEFT adapter directory? use --adapter-name for a sub-folder)`,
    );
  const config = loraConfigFromJson(JSON.parse(await readFile(configPath, 'utf8')), { warn: () => undefined });
  if (!(await stat(weightsPath).catch(() => null))) throw new UsageError(`${root}: no adapter_model.safetensors`);
  const { tensors } = await loadSafetensors(weightsPath);
  return { config, tensors, root };
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
