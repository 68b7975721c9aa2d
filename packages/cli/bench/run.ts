/**
 * `npm run bench -w @lora/cli`: (1) forward and training-step overhead of LoRA (r 16 on q/k/v/o) over
 * the bare ~10M Llama, on this machine's best backend; (2) `lora merge` throughput against reading
 * and writing the same bytes (the floor any merge has to pay).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, saveAdapter } from '@lora/core';
import { AdamW, manualSeed } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { initBackend, serializeSafetensors } from '@lora/tensor';
import { runCli } from '../src/cli';

const CONFIG = { model_type: 'llama', vocab_size: 8192, hidden_size: 256, intermediate_size: 688, num_hidden_layers: 8, num_attention_heads: 8, num_key_value_heads: 4, max_position_embeddings: 512, rms_norm_eps: 1e-5 };

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

async function step(model: LlamaForCausalLM | ReturnType<typeof getPeftModel>, ids: tf.Tensor2D, forwardOnly: boolean, opt: AdamW | null): Promise<void> {
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

const info = await initBackend((process.env.LORA_BACKEND ?? 'auto') as 'auto');
const ids = tf.tidy(() => tf.cast(tf.mul(tf.randomUniform([4, 128]), 8191), 'int32')) as tf.Tensor2D;
manualSeed(0);
const bare = new LlamaForCausalLM(parseLlamaConfig(CONFIG));
const bareOpt = new AdamW(bare.trainableParameters(), { lr: 1e-4 });
const bareFwd = await median(() => step(bare, ids, true, null));
const bareTrain = await median(() => step(bare, ids, false, bareOpt));
bareOpt.dispose();
const peft = getPeftModel(bare, { r: 16, loraAlpha: 32, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] });
const loraOpt = new AdamW(peft.trainableParameters(), { lr: 1e-4 });
const loraFwd = await median(() => step(peft, ids, true, null));
const loraTrain = await median(() => step(peft, ids, false, loraOpt));
loraOpt.dispose();

// lora merge against plain read + write of the same checkpoint
const dir = mkdtempSync(join(tmpdir(), 'lora-bench-'));
const base = join(dir, 'model.safetensors');
const { tensors } = { tensors: Object.fromEntries([...peft.model.namedParameters()].filter(([n]) => !n.includes('lora_')).map(([n, p]) => [n.replace('.base_layer', ''), p])) };
writeFileSync(base, await serializeSafetensors(tensors));
await saveAdapter(peft, join(dir, 'adapter'));
const bytes = readFileSync(base).length;
const io = { out: () => undefined, err: () => undefined };
const mergeMs = await median(async () => {
  await runCli(['merge', '--base', base, '--adapter', join(dir, 'adapter'), '--out', join(dir, 'merged.safetensors')], io);
}, 3);
const copyMs = await median(async () => {
  writeFileSync(join(dir, 'copy.safetensors'), readFileSync(base));
}, 3);
rmSync(dir, { recursive: true, force: true });
const tok = 4 * 128;
console.log(`\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, ${info.name} (${info.adapter}); Llama ~10M, batch 4 × 128; LoRA r 16 on q/k/v/o\n`);
console.log('| | bare model | with LoRA | overhead |');
console.log('| --- | --- | --- | --- |');
console.log(`| forward ms (tokens/s) | ${bareFwd.toFixed(1)} (${((tok / bareFwd) * 1000).toFixed(0)}) | ${loraFwd.toFixed(1)} (${((tok / loraFwd) * 1000).toFixed(0)}) | ${((loraFwd / bareFwd - 1) * 100).toFixed(0)}% |`);
console.log(`| training step ms (tokens/s) | ${bareTrain.toFixed(1)} (${((tok / bareTrain) * 1000).toFixed(0)}) — all weights | ${loraTrain.toFixed(1)} (${((tok / loraTrain) * 1000).toFixed(0)}) — adapters only | ${((loraTrain / bareTrain - 1) * 100).toFixed(0)}% |`);
console.log(`\n| lora merge of a ${(bytes / 2 ** 20).toFixed(1)} MiB checkpoint | ${mergeMs.toFixed(0)} ms (${(bytes / 2 ** 20 / (mergeMs / 1000)).toFixed(0)} MiB/s) | read + write the same bytes: ${copyMs.toFixed(0)} ms (${(bytes / 2 ** 20 / (copyMs / 1000)).toFixed(0)} MiB/s) |`);
