/**
 * Throughput of a ~10M-parameter Llama (hidden 256, 8 layers, 8 heads / 4 kv heads, vocab 8192):
 * forward tokens/s and full training-step (AdamW) tokens/s on the active backend.
 */
import * as tf from '@tensorflow/tfjs-core';
import { AdamW, manualSeed } from '@lora/nn';
import { LlamaForCausalLM, parseLlamaConfig } from '../src/index';

export const BENCH_CONFIG = {
  model_type: 'llama',
  vocab_size: 8192,
  hidden_size: 256,
  intermediate_size: 688,
  num_hidden_layers: 8,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
};
/** SmolLM-135M's shape (HuggingFaceTB/SmolLM-135M's config.json, less the tokenizer ids). */
export const SMOLLM_135M = {
  model_type: 'llama',
  vocab_size: 49152,
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  initializer_range: 0.02,
  tie_word_embeddings: true,
};
export const BATCH = 4;
export const SEQ = 128;

async function median(fn: () => Promise<void>, runs: number): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)] as number;
}

export async function benchLlama(
  runs = 5,
): Promise<{ params: number; forwardTokS: number; trainTokS: number; forwardMs: number; trainMs: number }> {
  manualSeed(0);
  const model = new LlamaForCausalLM(parseLlamaConfig(BENCH_CONFIG));
  const params = model.parameters().reduce((s, p) => s + p.size, 0);
  const ids = tf.tidy(() => tf.cast(tf.mul(tf.randomUniform([BATCH, SEQ]), 8191), 'int32')) as tf.Tensor2D;
  model.eval();
  const forwardMs = await median(async () => {
    const { logits } = model.forward(ids);
    await logits.data();
    logits.dispose();
  }, runs);
  model.train();
  const opt = new AdamW(model.trainableParameters(), { lr: 1e-4 });
  const trainMs = await median(async () => {
    const { value, grads } = tf.variableGrads(
      () => model.forward(ids, { labels: ids }).loss as tf.Scalar,
      model.trainableParameters(),
    );
    opt.step(grads);
    await value.data();
    tf.dispose([value, ...Object.values(grads)]);
  }, runs);
  opt.dispose();
  ids.dispose();
  model.dispose();
  const tokens = BATCH * SEQ;
  return { params, forwardMs, trainMs, forwardTokS: (tokens / forwardMs) * 1000, trainTokS: (tokens / trainMs) * 1000 };
}
