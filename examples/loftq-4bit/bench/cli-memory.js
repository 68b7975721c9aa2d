// @ts-check
// Peak memory of `lora loftq` on two checkpoint sizes: two Llama-shaped bf16 checkpoints with the same
// layer shapes (hidden 768, intermediate 2048, vocabulary 8192) and 4 or 12 layers (the second about
// 2.6 times the first); each `lora loftq` run (4 bits, r 16, one step, the default q_proj/v_proj targets
// and all-linear) in a child process that reports its own peak resident memory. If the command streams
// a layer at a time, the peak stays put while the file grows. Linux only (it reads /proc/self/status).
//   node bench/cli-memory.js          (after a build; the CLI from packages/cli/dist)
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Generator, initBackend, serializeSafetensors } from '@lora/tensor';

if (process.argv[2] === 'child') {
  // The measured process: the CLI in-process, then its peak RSS. Linux's VmHWM (/proc/self/status) is
  // the peak of this process image alone; getrusage's ru_maxrss is not: it keeps the RSS of the parent
  // that forked it (this script, holding the checkpoint it just made), so it grew with the file.
  const { runCli } = await import('@lora/cli');
  const { readFileSync } = await import('node:fs');
  const code = await runCli(process.argv.slice(3), { out: () => {}, err: (l) => process.stderr.write(`${l}\n`) });
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  if (!hwm) throw new Error('no VmHWM in /proc/self/status (this benchmark needs Linux)');
  process.stdout.write(`${JSON.stringify({ code, maxRssMiB: Number(hwm) / 1024 })}\n`);
  process.exit(code);
}

await initBackend('cpu');
const HIDDEN = 768;
const INTER = 2048;
const VOCAB = 8192;
const KV = 256;

/** @param {string} dir @param {number} layers */
async function checkpoint(dir, layers) {
  mkdirSync(dir, { recursive: true });
  const g = new Generator(1);
  /** @type {Record<string, number[]>} */
  const shapes = { 'model.embed_tokens.weight': [VOCAB, HIDDEN], 'model.norm.weight': [HIDDEN] };
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    Object.assign(shapes, {
      [`${p}.self_attn.q_proj.weight`]: [HIDDEN, HIDDEN],
      [`${p}.self_attn.k_proj.weight`]: [KV, HIDDEN],
      [`${p}.self_attn.v_proj.weight`]: [KV, HIDDEN],
      [`${p}.self_attn.o_proj.weight`]: [HIDDEN, HIDDEN],
      [`${p}.mlp.gate_proj.weight`]: [INTER, HIDDEN],
      [`${p}.mlp.up_proj.weight`]: [INTER, HIDDEN],
      [`${p}.mlp.down_proj.weight`]: [HIDDEN, INTER],
      [`${p}.input_layernorm.weight`]: [HIDDEN],
      [`${p}.post_attention_layernorm.weight`]: [HIDDEN],
    });
  }
  const tensors = Object.fromEntries(
    Object.entries(shapes).map(([n, s]) => [n, tf.tidy(() => tf.mul(g.randn(s), 0.02))]),
  );
  writeFileSync(join(dir, 'model.safetensors'), await serializeSafetensors(tensors, { dtype: 'BF16' }));
  tf.dispose(Object.values(tensors));
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      model_type: 'llama',
      hidden_size: HIDDEN,
      intermediate_size: INTER,
      num_hidden_layers: layers,
      vocab_size: VOCAB,
    }),
  );
  return statSync(join(dir, 'model.safetensors')).size;
}

const root = mkdtempSync(join(tmpdir(), 'loftq-cli-memory-'));
const rows = [];
try {
  for (const layers of [4, 12]) {
    const base = join(root, `base-${layers}`);
    const bytes = await checkpoint(base, layers);
    for (const target of [null, 'all-linear']) {
      const out = join(root, `out-${layers}-${target ?? 'qv'}`);
      const args = ['loftq', '--base', base, '--out', out, '--rank', '16', '--bits', '4', '--svd', 'randomized'];
      if (target) args.push('--target', target);
      const t = performance.now();
      const p = spawnSync(process.execPath, [import.meta.filename, 'child', ...args], {
        encoding: 'utf8',
        env: { ...process.env, LORA_BACKEND: process.env.LORA_BACKEND ?? 'wasm' },
      });
      const r = JSON.parse(p.stdout.trim().split('\n').at(-1) ?? '{}');
      if (r.code !== 0) throw new Error(`lora loftq failed: ${p.stderr.slice(-800)}`);
      rows.push({
        layers,
        fileMiB: bytes / 2 ** 20,
        targets: target ?? 'q_proj, v_proj',
        weights: (p.stderr.match(/LoftQ on (\d+) weights/) ?? [])[1],
        peakRssMiB: r.maxRssMiB,
        seconds: (performance.now() - t) / 1000,
      });
      rmSync(out, { recursive: true, force: true });
      console.error(JSON.stringify(rows.at(-1)));
    }
  }
} finally {
  rmSync(root, { recursive: true, force: true });
}
const largest = (INTER * HIDDEN * 4) / 2 ** 20;
console.log(
  `\npeak resident memory of lora loftq (4 bits, r 16, randomized SVD; the largest weight is ${largest.toFixed(1)} MiB in float32)`,
);
console.log('| checkpoint (bf16) | targets | weights | peak RSS | time |');
console.log('| --- | --- | --- | --- | --- |');
for (const r of rows)
  console.log(
    `| ${r.layers} layers, ${r.fileMiB.toFixed(0)} MiB | ${r.targets} | ${r.weights} | ${r.peakRssMiB.toFixed(0)} MiB | ${r.seconds.toFixed(0)} s |`,
  );
