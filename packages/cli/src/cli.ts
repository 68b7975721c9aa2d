import { combineCommand } from './commands/combine';
import { inspectCommand } from './commands/inspect';
import { mergeCommand } from './commands/merge';
import { createRequire } from 'node:module';
import { OutputError } from '@lora/tensor/node';
import { type Command, type Io, UsageError } from './shared';

export type { Io } from './shared';

/** Every sub-command, in the order `lora --help` lists them. */
const COMMANDS: Command[] = [inspectCommand, mergeCommand, combineCommand];

function mainHelp(): string {
  return [
    'lora — PEFT LoRA adapters from the command line',
    '',
    'Usage:',
    ...COMMANDS.map((c) => `  ${c.usage}`),
    '  lora <command> --help                      help for one command',
    '  lora --version                             the version of @lora/cli',
    '',
    'Options for every command:',
    '  --verbose   say which backend started and why the others did not (also LORA_BACKEND=cpu|wasm|tensorflow)',
    '',
    'merge and combine replace an existing --out only with --force, only when it is an output of the same',
    'kind, and by renames: an interrupted run leaves the old output or the new one (lora merge --help).',
  ].join('\n');
}

/** The version in @lora/cli's package.json (beside src/ and dist/ alike). */
export function cliVersion(): string {
  return (createRequire(import.meta.url)('../package.json') as { version: string }).version;
}

/**
 * Runs the `lora` command with `argv` (without the node and script paths). Returns the exit code;
 * any error is one line on stderr and a non-zero code.
 *
 * @example
 * ```ts
 * process.exitCode = await runCli(['inspect', 'my-adapter'], { out: console.log, err: console.error });
 * ```
 */
export async function runCli(argv: string[], io: Io): Promise<number> {
  const verbose = argv.includes('--verbose');
  const [command, ...rest] = argv.filter((a) => a !== '--verbose');
  const withVerbose: Io = verbose ? { ...io, verbose } : io;
  try {
    if (command === '--version' || command === '-v') {
      io.out(cliVersion());
      return 0;
    }
    if (!command || command === '--help' || command === '-h') {
      io.out(mainHelp());
      return command ? 0 : 2;
    }
    const found = COMMANDS.find((c) => c.name === command);
    if (found) return await found.run(rest, withVerbose);
    throw new UsageError(
      `unknown command '${command}'; commands are ${COMMANDS.map((c) => c.name).join(', ')} (lora --help)`,
    );
  } catch (e) {
    io.err(`lora ${command ?? ''}: ${(e as Error).message.split('\n')[0]}`);
    // an --out that was refused is a mistake in the call; a disk that is full or read-only is not
    const refused = e instanceof OutputError && ['exists', 'foreign', 'overlap', 'unsafe-path'].includes(e.code);
    return e instanceof UsageError || refused ? 2 : 1;
  }
}
