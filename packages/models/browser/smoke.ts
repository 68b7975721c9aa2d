/**
 * The browser smoke run: bundled with esbuild into a page, it loads a transformers checkpoint from
 * in-memory files (fetched by the page, no file system), checks logits and generation against the
 * transformers fixture, and trains a few steps. Results go to `window.__lora`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, parseSafetensors } from '@lora/tensor';
import { AdamW, train } from '@lora/nn';
import { LlamaForCausalLM, loadTokenizer } from '@lora/models';

/** What the page reports per backend (read by src/browser.test.ts). */
export interface SmokeResult {
  backend: string;
  adapter: string;
  logitsRelErr: number;
  generated: number[];
  expectedGenerated: number[];
  lossFirst: number;
  lossLast: number;
  tokens: number[];
  expectedTokens: number[];
  leaked: number;
}

async function fetchFiles(base: string, names: string[]): Promise<Record<string, Uint8Array>> {
  const entries = await Promise.all(
    names.map(async (n) => [n, new Uint8Array(await (await fetch(`${base}/${n}`)).arrayBuffer())] as const),
  );
  return Object.fromEntries(entries);
}

async function run(backend: 'cpu' | 'webgpu'): Promise<SmokeResult> {
  const info = await initBackend(backend, {
    importers: {
      '@tensorflow/tfjs-backend-cpu': () => import('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-webgpu': () => import('@tensorflow/tfjs-backend-webgpu'),
    },
  });
  const before = tf.memory().numTensors;
  const summary = await (await fetch('/fixtures/expected.json')).json();
  const files = await fetchFiles('/fixtures/llama-gqa', ['config.json', 'model.safetensors', 'expected.safetensors']);
  const model = await LlamaForCausalLM.fromPretrained({
    'config.json': files['config.json']!,
    'model.safetensors': files['model.safetensors']!,
  });
  model.eval();
  const { tensors: want } = parseSafetensors(files['expected.safetensors']!);
  const mask = (await want.attention_mask!.array()) as number[][];
  const { logits } = model.forward(want.input_ids as tf.Tensor2D, { attentionMask: mask });
  const [got, exp] = await Promise.all([logits.data(), want.logits!.data()]);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < exp.length; i++) {
    diff = Math.max(diff, Math.abs((got[i] as number) - (exp[i] as number)));
    scale = Math.max(scale, Math.abs(exp[i] as number));
  }
  const prompt = ((await want.input_ids!.array()) as number[][])[0]!.slice(0, 5);
  const generated = (await model.generate([prompt], { maxNewTokens: 10 }))[0]!;
  tf.dispose([logits, ...Object.values(want)]);
  // a few training steps on the LM head
  model.requiresGrad(false);
  model.lmHead.requiresGrad(true);
  const ids = tf.tensor2d([[5, 9, 13, 17, 21, 25]], [1, 6], 'int32');
  const opt = new AdamW(model.trainableParameters(), { lr: 0.05, weightDecay: 0 });
  const r = await train(model, [ids, ids, ids, ids, ids], {
    optimizer: opt,
    loss: (x) => model.forward(x, { labels: x }).loss as tf.Scalar,
  });
  opt.dispose();
  ids.dispose();
  model.dispose();
  const tokFiles = await fetchFiles('/fixtures/tokenizer', ['tokenizer.json', 'tokenizer_config.json']);
  const tok = await loadTokenizer(tokFiles);
  const c = summary.tokenizer[0];
  return {
    backend: info.name,
    adapter: info.adapter,
    logitsRelErr: diff / scale,
    generated,
    expectedGenerated: summary.cases['llama-gqa'].generated,
    lossFirst: r.losses[0] as number,
    lossLast: r.losses.at(-1) as number,
    tokens: tok.encode(c.text).ids,
    expectedTokens: c.ids,
    leaked: tf.memory().numTensors - before,
  };
}

const w = window as unknown as { __lora: { results: SmokeResult[]; errors: string[]; done: boolean } };
w.__lora = { results: [], errors: [], done: false };
for (const backend of ['cpu', 'webgpu'] as const) {
  try {
    w.__lora.results.push(await run(backend));
  } catch (e) {
    w.__lora.errors.push(`${backend}: ${(e as Error).message}`);
  }
}
w.__lora.done = true;
