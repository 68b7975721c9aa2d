/**
 * `npm run bench:combine -w @lora/cli`: `lora combine --type ties_svd --density 0.5` itself on two
 * synthetic adapters of a 7B Llama's shapes, against PEFT on torch CPU (see bench/combine-bench.ts).
 */
import { join } from 'node:path';
import { runCli } from '../src/cli';
import { startBackend } from '../src/shared';
import { combineBench } from './combine-bench';

await combineBench({
  dir: join(import.meta.dirname, '..', '.bench', 'combine-7b'),
  peerScript: join(import.meta.dirname, '..', 'bench', 'peer_combine.py'),
  init: startBackend,
  combine: async (a, b, out) => {
    const args = ['combine', '--adapter', a, '--adapter', b, '--weights', '0.7,1.3', '--type', 'ties_svd'];
    const code = await runCli([...args, '--density', '0.5', '--out', out, '--force'], {
      out: () => undefined,
      err: (line) => process.stderr.write(`  ${line}\n`),
    });
    if (code !== 0) throw new Error(`lora combine exited with ${code}`);
  },
});
