// @ts-check
// The main demo: a small Llama (embedded config, seeded weights, a byte-level BPE tokenizer shipped
// here) gets LoRA adapters on every linear layer, learns one sentence, generates it back, and saves
// the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors).
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { getPeftModel, saveAdapter } from '@lora/core';
import { LlamaForCausalLM, loadTokenizer, parseLlamaConfig } from '@lora/models';
import { AdamW, linearWarmupSchedule, manualSeed, train } from '@lora/nn';
import { initBackend } from '@lora/tensor';

const here = import.meta.dirname;
const info = await initBackend(/** @type {'auto'} */ (process.env.LORA_BACKEND ?? 'auto'));
console.log(`backend: ${info.name} (${info.adapter})`);

const tokenizer = await loadTokenizer(join(here, '..', 'assets'));
manualSeed(0);
const model = new LlamaForCausalLM(
  parseLlamaConfig({
    model_type: 'llama',
    vocab_size: 300,
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    eos_token_id: 2,
  }),
);

const sentence = 'LoRA trains two small matrices per layer.';
const ids = tokenizer.encode(sentence).ids;
const prompt = ids.slice(0, 3);
console.log(`sentence: "${sentence}" (${ids.length} tokens); prompt: "${tokenizer.decode(prompt)}"`);
const before = await model.generate([prompt], { maxNewTokens: ids.length - 3 });
console.log(`before training: "${tokenizer.decode(before[0] ?? [])}"`);

// every projection and the output layer: the random base's tiny output weights would cap the logits
const peft = getPeftModel(model, {
  r: 8,
  loraAlpha: 16,
  targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'],
});
peft.printTrainableParameters();
const x = tf.tensor2d([ids], [1, ids.length], 'int32');
const optimizer = new AdamW(peft.trainableParameters(), { lr: 1e-2, weightDecay: 0 });
const result = await train(
  peft,
  Array.from({ length: 80 }, () => x),
  {
    optimizer,
    schedule: linearWarmupSchedule({ warmupSteps: 5, totalSteps: 80 }),
    loss: (batch) => /** @type {tf.Scalar} */ (model.forward(batch, { labels: batch }).loss),
    progressBar: false,
    callbacks: {
      onStepEnd: (step, logs) =>
        step % 20 === 0 ? console.log(`step ${step}: loss ${logs.loss.toFixed(4)}`) : undefined,
    },
  },
);
const after = await model.generate([prompt], { maxNewTokens: ids.length - 3 });
const text = tokenizer.decode(after[0] ?? []);
console.log(`after training:  "${text}"`);
const out = join(here, '..', 'out', 'adapter');
// lm_head is a target, so PEFT's 'auto' would also save the (unchanged) base embedding tables; the base model has them.
// force: a second run of the demo replaces the adapter the first one saved
await saveAdapter(peft, out, { saveEmbeddingLayers: false, force: true });
console.log(
  `loss ${result.losses[0]?.toFixed(3)} -> ${result.losses.at(-1)?.toFixed(3)}; adapter saved in PEFT's format to ${out}`,
);
tf.dispose([x]);
optimizer.dispose();
if (text !== sentence) {
  console.error('the adapter did not learn the sentence');
  process.exit(1);
}
