/**
 * A random tiny Llama checkpoint directory for the command tests (config.json, model.safetensors and the
 * models package's fixture tokenizer): hidden 32, 2 layers, 4 / 2 heads, vocabulary 300. Not part of
 * the package.
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LlamaForCausalLM, parseLlamaConfig } from '@lora/models';
import { manualSeed } from '@lora/nn';
import { serializeSafetensors } from '@lora/tensor';

const TOKENIZER = join(import.meta.dirname, '..', '..', 'models', '__fixtures__', 'tokenizer');

/** The config every command test's tiny Llama has (`extra` adds or overrides fields). */
export function tinyLlamaConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model_type: 'llama',
    vocab_size: 300,
    hidden_size: 32,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    ...extra,
  };
}

/** Writes the checkpoint (weights drawn after `manualSeed(seed)`) into `dir`, made if missing. */
export async function writeTinyLlama(dir: string, options: { seed?: number; config?: Record<string, unknown> } = {}) {
  mkdirSync(dir, { recursive: true });
  const config = tinyLlamaConfig(options.config);
  manualSeed(options.seed ?? 0);
  const model = new LlamaForCausalLM(parseLlamaConfig(config));
  try {
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    writeFileSync(
      join(dir, 'model.safetensors'),
      await serializeSafetensors(model.stateDict(), { metadata: { format: 'pt' } }),
    );
  } finally {
    model.dispose();
  }
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(TOKENIZER, f), join(dir, f));
}
