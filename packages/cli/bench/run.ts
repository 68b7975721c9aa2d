/**
 * `npm run bench -w @lora/cli`: (1) forward and training-step overhead of LoRA (r 16 on q/k/v/o) over
 * the bare ~10M Llama, on this machine's best backend; (2) `lora merge` throughput against reading
 * and writing the same bytes (the floor any merge has to pay); (3) the memory a merge of a larger
 * (384 MiB, float32) checkpoint takes: the peak RSS of a process running it, against a process that
 * only reads the adapter (a merge that loaded the file would need at least the file's size more).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, saveAdapter } from '@lora/core';
import { AdamW, manualSeed } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { runCli } from '../src/cli';

// child mode: run one `lora` command in a fresh process and report its peak resident memory
if (process.argv[2] === '--child') {
  const code = await runCli(process.argv.slice(3), { out: () => undefined, err: () => undefined });
  // VmHWM: this process's own peak (getrusage's maxRSS is carried over from the parent across fork/exec)
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  console.log(JSON.stringify({ code, maxRssKiB: Number(hwm) }));
  process.exit(0);
}

/** Runs `lora <args>` in a child process (this bench file in child mode); returns its peak RSS in MiB. */
function childPeakMiB(args: string[]): number {
  const out = execFileSync(process.execPath, [process.argv[1] as string, '--child', ...args], { encoding: 'utf8' });
  const { code, maxRssKiB } = JSON.parse(out.trim().split('\n').at(-1) as string) as {
    code: number;
    maxRssKiB: number;
  };
  if (code !== 0) throw new Error(`lora ${args[0]} failed in the child process`);
  return maxRssKiB / 1024;
}

const CONFIG = {
  model_type: 'llama',
  vocab_size: 8192,
  hidden_size: 256,
  intermediate_size: 688,
  num_hidden_layers: 8,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
};

async function median(fn: () => Promise<void>, runs = 5): Promise<number> {
  await fn();
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  return t.sort((a, b) => a - b)[Math.floor(t.length / 2)] as number;
}

async function step(
  model: LlamaForCausalLM | ReturnType<typeof getPeftModel>,
  ids: tf.Tensor2D,
  forwardOnly: boolean,
  opt: AdamW | null,
): Promise<void> {
  const run = (m: unknown) => (m as LlamaForCausalLM).forward(ids, { labels: ids });
  const target = 'baseModel' in model ? (model.model as LlamaForCausalLM) : model;
  if (forwardOnly) {
    const { logits, loss } = run(target);
    await logits.data();
    tf.dispose([logits, loss as tf.Tensor]);
    return;
  }
  const params = model.trainableParameters();
  const { value, grads } = tf.variableGrads(() => run(target).loss as tf.Scalar, params);
  opt?.step(grads);
  await value.data();
  tf.dispose([value, ...Object.values(grads)]);
}

// LORA_BENCH_BACKEND picks the backend of the overhead part (the merges run in `lora`'s own default);
// the importers let a bundled copy (../shared/device/pack) reach the backends it carries
const info = await initBackend((process.env.LORA_BENCH_BACKEND ?? process.env.LORA_BACKEND ?? 'auto') as 'auto', {
  importers: {
    '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
    '@tensorflow/tfjs-backend-wasm': () => import('@tensorflow/tfjs-backend-wasm'),
    '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
  },
});
const ids = tf.tidy(() => tf.cast(tf.mul(tf.randomUniform([4, 128]), 8191), 'int32')) as tf.Tensor2D;
manualSeed(0);
const bare = new LlamaForCausalLM(parseLlamaConfig(CONFIG));
const bareOpt = new AdamW(bare.trainableParameters(), { lr: 1e-4 });
const bareTrain = await median(() => step(bare, ids, false, bareOpt));
bareOpt.dispose();
const peft = getPeftModel(bare, { r: 16, loraAlpha: 32, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
const loraOpt = new AdamW(peft.trainableParameters(), { lr: 1e-4 });
// forward: the same model with its adapters disabled (the base layers alone) and enabled, alternating
// run by run so that the machine's drift falls on both sides alike
const fwdTimes: { bare: number[]; lora: number[] } = { bare: [], lora: [] };
for (let i = 0; i < 8; i++) {
  for (const kind of ['bare', 'lora'] as const) {
    if (kind === 'bare') peft.disableAdapters();
    else peft.enableAdapters();
    const t0 = performance.now();
    await step(peft, ids, true, null);
    if (i > 0) fwdTimes[kind].push(performance.now() - t0); // the first pair warms up
  }
}
peft.enableAdapters();
const mid = (t: number[]) => [...t].sort((a, b) => a - b)[Math.floor(t.length / 2)] as number;
const bareFwd = mid(fwdTimes.bare);
const loraFwd = mid(fwdTimes.lora);
const loraTrain = await median(() => step(peft, ids, false, loraOpt));
loraOpt.dispose();

const tok = 4 * 128;
console.log(
  `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${info.name} (${info.adapter}); Llama ~10M, batch 4 × 128; LoRA r 16 on q/k/v/o\n`,
);
console.log('| | bare model | with LoRA | overhead |');
console.log('| --- | --- | --- | --- |');
console.log(
  `| forward ms (tokens/s) | ${bareFwd.toFixed(1)} (${((tok / bareFwd) * 1000).toFixed(0)}) | ${loraFwd.toFixed(1)} (${((tok / loraFwd) * 1000).toFixed(0)}) | ${((loraFwd / bareFwd - 1) * 100).toFixed(0)}% |`,
);
console.log(
  `| training step ms (tokens/s) | ${bareTrain.toFixed(1)} (${((tok / bareTrain) * 1000).toFixed(0)}) — all weights | ${loraTrain.toFixed(1)} (${((tok / loraTrain) * 1000).toFixed(0)}) — adapters only | ${((loraTrain / bareTrain - 1) * 100).toFixed(0)}% |`,
);
if (process.env.LORA_BENCH_ONLY === 'overhead') process.exit(0);

// lora merge against plain read + write of the same checkpoint
const dir = mkdtempSync(join(tmpdir(), 'lora-bench-'));
const base = join(dir, 'model.safetensors');
const { tensors } = {
  tensors: Object.fromEntries(
    [...peft.model.namedParameters()]
      .filter(([n]) => !n.includes('lora_'))
      .map(([n, p]) => [n.replace('.base_layer', ''), p]),
  ),
};
writeFileSync(base, await serializeSafetensors(tensors));
await saveAdapter(peft, join(dir, 'adapter'));
const bytes = readFileSync(base).length;
const io = { out: () => undefined, err: () => undefined };
const mergeMs = await median(async () => {
  await runCli(
    ['merge', '--base', base, '--adapter', join(dir, 'adapter'), '--out', join(dir, 'merged.safetensors'), '--force'],
    io,
  );
}, 3);
const copyMs = await median(async () => {
  writeFileSync(join(dir, 'copy.safetensors'), readFileSync(base));
}, 3);
rmSync(dir, { recursive: true, force: true });
// (3) memory of a streaming merge: checkpoints of `layers` weights of 2048², an adapter (r 16) on every third
const n = 2048;
async function mergeMemory(layers: number): Promise<{ mib: number; ms: number; peak: number; floor: number }> {
  const big = mkdtempSync(join(tmpdir(), 'lora-bench-big-'));
  const weights: Record<string, { dtype: 'float32'; shape: number[]; values: Float32Array }> = {};
  for (let i = 0; i < layers; i++)
    weights[`layers.${i}.proj.weight`] = {
      dtype: 'float32',
      shape: [n, n],
      values: new Float32Array(n * n).fill(0.01 * i),
    };
  writeFileSync(join(big, 'model.safetensors'), await serializeSafetensors(weights));
  const adapterTensors: Record<string, tf.Tensor> = {};
  for (let i = 0; i < layers; i += 3) {
    adapterTensors[`base_model.model.layers.${i}.proj.lora_A.weight`] = tf.randomNormal([16, n]);
    adapterTensors[`base_model.model.layers.${i}.proj.lora_B.weight`] = tf.randomNormal([n, 16]);
  }
  mkdirSync(join(big, 'adapter'));
  writeFileSync(join(big, 'adapter', 'adapter_model.safetensors'), await serializeSafetensors(adapterTensors));
  writeFileSync(
    join(big, 'adapter', 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r: 16, lora_alpha: 32, target_modules: ['proj'] }),
  );
  tf.dispose(Object.values(adapterTensors));
  const mib = statSync(join(big, 'model.safetensors')).size / 2 ** 20;
  const t0 = performance.now();
  const peak = childPeakMiB([
    'merge',
    '--base',
    join(big, 'model.safetensors'),
    '--adapter',
    join(big, 'adapter'),
    '--out',
    join(big, 'merged.safetensors'),
  ]);
  const ms = performance.now() - t0;
  // the same process reading the adapter only: Node, tfjs and the backend, the floor of any command
  const floor = childPeakMiB(['inspect', join(big, 'adapter')]);
  rmSync(big, { recursive: true, force: true });
  return { mib, ms, peak, floor };
}
const memory = [await mergeMemory(12), await mergeMemory(36)];

console.log(
  `\n| lora merge of a ${(bytes / 2 ** 20).toFixed(1)} MiB checkpoint | ${mergeMs.toFixed(0)} ms (${(bytes / 2 ** 20 / (mergeMs / 1000)).toFixed(0)} MiB/s) | read + write the same bytes: ${copyMs.toFixed(0)} ms (${(bytes / 2 ** 20 / (copyMs / 1000)).toFixed(0)} MiB/s) |`,
);
for (const m of memory) {
  console.log(
    `| lora merge of a ${m.mib.toFixed(0)} MiB checkpoint (a third of its ${n}² weights adapted) | ${m.ms.toFixed(0)} ms (${(m.mib / (m.ms / 1000)).toFixed(0)} MiB/s) | peak RSS of the merge process ${m.peak.toFixed(0)} MiB, ${m.floor.toFixed(0)} MiB for \`lora inspect\`: +${(m.peak - m.floor).toFixed(0)} MiB (one weight: ${((n * n * 4) / 2 ** 20).toFixed(0)} MiB) |`,
  );
}
