/**
 * `npm run bench -w @lora/models`: forward and training-step tokens/s of a ~10M-parameter Llama on
 * this machine's best backend (LORA_BACKEND to choose), with PyTorch on the same machine in the
 * same run as the peer (PYTHON, or the repository's .venv-oracle, needs torch and transformers).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend } from '@lora/tensor';
import { BATCH, BENCH_CONFIG, SEQ, benchLlama } from './cases';

const info = await initBackend((process.env.LORA_BACKEND ?? 'auto') as 'auto');
console.error(`timing @lora/models on ${info.name} (${info.adapter})…`);
const ours = await benchLlama();
const venv = join(import.meta.dirname, '..', '..', '..', '.venv-oracle', 'bin', 'python');
const python = process.env.PYTHON ?? (existsSync(venv) ? venv : 'python3');
console.error(`timing PyTorch (${python})…`);
const res = spawnSync(
  python,
  [join(import.meta.dirname, '..', 'bench', 'peer.py'), JSON.stringify(BENCH_CONFIG), String(BATCH), String(SEQ)],
  { encoding: 'utf8' },
);
const peer = res.status === 0 ? JSON.parse(res.stdout.trim().split('\n').at(-1) as string) : null;
if (!peer) console.error(`no PyTorch peer: ${res.error?.message ?? res.stderr.trim().split('\n').at(-1)}`);
console.log(
  `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}; Llama ${(ours.params / 1e6).toFixed(1)}M params, batch ${BATCH} × ${SEQ} tokens\n`,
);
console.log('| runtime | forward tokens/s | training step tokens/s | forward ms | step ms |');
console.log('| --- | --- | --- | --- | --- |');
console.log(
  `| @lora/models, ${info.name} (${info.adapter}) | ${ours.forwardTokS.toFixed(0)} | ${ours.trainTokS.toFixed(0)} | ${ours.forwardMs.toFixed(1)} | ${ours.trainMs.toFixed(1)} |`,
);
for (const dev of ['cuda', 'cpu']) {
  const p = peer?.[dev];
  if (p)
    console.log(
      `| PyTorch ${peer.torch} ${dev}${dev === 'cpu' ? ` (${peer.threads} threads)` : ''}, eager attention | ${p.forwardTokS.toFixed(0)} | ${p.trainTokS.toFixed(0)} | ${p.forwardMs.toFixed(1)} | ${p.trainMs.toFixed(1)} |`,
    );
}
