#!/usr/bin/env node
// The `lora` command. This file is committed (dist/ is not), so that npm links `lora` into
// node_modules/.bin when a clone is installed, before anything is built; it runs the built CLI.
import { existsSync } from 'node:fs';

const built = new URL('../dist/bin.js', import.meta.url);
if (!existsSync(built)) {
  console.error(
    'lora: @lora/cli is not built (no packages/cli/dist/bin.js). In a clone of the repository, run `npm run build` (or `npm run demo`) first, then `npx lora --help`.',
  );
  process.exit(1);
}
await import(built.href);
