import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { loraConfigFromJson } from '@lora/core';
import { initBackend } from '@lora/tensor';
import { loadSafetensors } from '@lora/tensor/node';

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

/**
 * Fills a temporary directory beside `out`, then moves it into place (replacing `out`): nothing
 * half-written on failure, the temporary directory removed.
 */
export async function writeDirAtomic(out: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = join(dirname(out), `.${basename(out)}.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  try {
    await mkdir(tmp, { recursive: true });
    await fill(tmp);
    await rm(out, { recursive: true, force: true });
    await rename(tmp, out);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
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
