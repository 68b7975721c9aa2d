/**
 * What the README snippets assume exists (`SmolLM-135M/`, `my-peft-adapter/`, a model holding two
 * adapters, a GPT-2-like module…), made small: written into the snippet's working directory by
 * `readme-snippets.test.ts` before the snippet runs.
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { type AdapterFiles, getPeftModel, loadAdapter, loraConfigFromJson, saveAdapter } from '@lora/core';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { Module, TransposedLinear, manualSeed } from '@lora/nn';
import { initBackend, parseSafetensors, serializeSafetensors } from '@lora/tensor';
import { hubFile } from '@lora/tensor/hub';
import { startFakeHub } from '@lora/tensor/testing';

const TOKENIZER = join(import.meta.dirname, '..', '..', 'packages', 'models', '__fixtures__', 'tokenizer');

/** A backend for making the stand-ins (cpu: no probing); the snippets then start their own. */
export async function start(): Promise<void> {
  await initBackend('cpu');
}

/** A tiny Llama checkpoint in Hugging Face's layout (config.json, model.safetensors, the 300-token BPE tokenizer). */
export async function tinyCheckpoint(dir = 'SmolLM-135M', vocabSize = 300): Promise<void> {
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: vocabSize,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    bos_token_id: 1,
    eos_token_id: 2,
  };
  manualSeed(0);
  const model = new LlamaForCausalLM(parseLlamaConfig(config));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeFile(
    join(dir, 'model.safetensors'),
    await serializeSafetensors(model.stateDict(), { metadata: { format: 'pt' } }),
  );
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(TOKENIZER, f), join(dir, f));
  model.dispose();
}

/** A PEFT adapter for the tiny checkpoint (q_proj and v_proj, non-zero A and B), saved in PEFT's layout. */
export async function peftAdapter(dir: string, seed: number): Promise<void> {
  manualSeed(seed);
  const peft = getPeftModel(await LlamaForCausalLM.fromPretrained('SmolLM-135M'), {
    r: 8,
    loraAlpha: 16,
    targetModules: ['q_proj', 'v_proj'],
    initLoraWeights: false,
  });
  await saveAdapter(peft, dir);
  peft.dispose();
}

/** An adapter directory as files in memory: its config and its tensors by PEFT's names. */
export async function adapterFiles(dir: string): Promise<AdapterFiles> {
  return {
    config: loraConfigFromJson(JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8'))),
    tensors: parseSafetensors(new Uint8Array(await readFile(join(dir, 'adapter_model.safetensors')))).tensors,
  };
}

/** The tiny checkpoint holding two adapters, 'sql' and 'chat' (PEFT's load_adapter twice). */
export async function modelWithTwoAdapters() {
  await peftAdapter('sql-lora', 1);
  await peftAdapter('chat-lora', 2);
  const { model: peft } = await loadAdapter(await LlamaForCausalLM.fromPretrained('SmolLM-135M'), 'sql-lora', {
    adapterName: 'sql',
  });
  await loadAdapter(peft, 'chat-lora', { adapterName: 'chat' });
  return { peft, sqlFiles: await adapterFiles('sql-lora'), chatFiles: await adapterFiles('chat-lora') };
}

/** A GPT-2-like block: transformers' Conv1D layers (weights [in, out]) as `c_attn` and `c_proj`. */
export class TinyGpt2 extends Module {
  c_attn = this.registerModule('c_attn', new TransposedLinear(48, 16));
  c_proj = this.registerModule('c_proj', new TransposedLinear(16, 16));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.c_proj.call(tf.slice(this.c_attn.call(x) as tf.Tensor, [0, 0], [-1, 16])) as tf.Tensor);
  }
}

/**
 * A Hugging Face Hub on 127.0.0.1 serving the tiny checkpoint as `HuggingFaceTB/SmolLM-135M`, found
 * through `HF_ENDPOINT`, with a fresh cache (`HF_HUB_CACHE`) that already holds the tokenizer (what
 * the snippets take as "cached by now"). Returns what undoes it.
 */
export async function fakeHub(): Promise<() => Promise<void>> {
  await tinyCheckpoint('.hub-files');
  const files: Record<string, Uint8Array> = {};
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
    files[f] = new Uint8Array(await readFile(join('.hub-files', f)));
  const hub = await startFakeHub([{ id: 'HuggingFaceTB/SmolLM-135M', files }]);
  // the variables @lora/tensor/hub reads, as Python's huggingface_hub does (test-only: not a turbo input)
  const env = process.env;
  const saved = { endpoint: env.HF_ENDPOINT, cache: env.HF_HUB_CACHE };
  env.HF_ENDPOINT = hub.url;
  env.HF_HUB_CACHE = resolve('hub-cache');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await hubFile('HuggingFaceTB/SmolLM-135M', f);
  return async () => {
    for (const [k, v] of [
      ['HF_ENDPOINT', saved.endpoint],
      ['HF_HUB_CACHE', saved.cache],
    ] as const) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    await hub.close();
  };
}
