/** The models of tools/oracle/eva_net.py, with the fixtures' weights and batches. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { Embedding, LayerNorm, Linear, Module, ModuleList, withoutInit } from '@lora/nn';
import { initBackend, parseSafetensors } from '@lora/tensor';

export const FIX = join(import.meta.dirname, '..', '__fixtures__');

/** A fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

export const readJson = <T = Record<string, unknown>>(file: string): T =>
  JSON.parse(readFileSync(join(FIX, file), 'utf8')) as T;

/** A Llama-shaped block without attention: q/k/v read the same normed input, gate/up the same. */
export class EvaBlock extends Module {
  norm1: LayerNorm;
  qProj: Linear;
  kProj: Linear;
  vProj: Linear;
  oProj: Linear;
  norm2: LayerNorm;
  gateProj: Linear;
  upProj: Linear;
  downProj: Linear;
  constructor(h: number, i: number) {
    super();
    this.norm1 = this.registerModule('norm1', new LayerNorm(h));
    this.qProj = this.registerModule('q_proj', new Linear(h, h, { bias: false }));
    this.kProj = this.registerModule('k_proj', new Linear(h, h, { bias: false }));
    this.vProj = this.registerModule('v_proj', new Linear(h, h, { bias: false }));
    this.oProj = this.registerModule('o_proj', new Linear(h, h, { bias: false }));
    this.norm2 = this.registerModule('norm2', new LayerNorm(h));
    this.gateProj = this.registerModule('gate_proj', new Linear(h, i, { bias: false }));
    this.upProj = this.registerModule('up_proj', new Linear(h, i, { bias: false }));
    this.downProj = this.registerModule('down_proj', new Linear(i, h, { bias: false }));
  }
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const a = this.norm1.call(x) as tf.Tensor;
      const mixed = tf.add(tf.mul(tf.tanh(this.qProj.call(a)), tf.sigmoid(this.kProj.call(a))), this.vProj.call(a));
      const h = tf.add(x, this.oProj.call(mixed));
      const b = this.norm2.call(h) as tf.Tensor;
      const g = this.gateProj.call(b) as tf.Tensor;
      return tf.add(h, this.downProj.call(tf.mul(tf.mul(g, tf.sigmoid(g)), this.upProj.call(b))));
    });
  }
}

/** ids [B, T] -> Embedding(40, 32) -> 2 EvaBlocks -> Linear head (40); attentionMask and labels are not used by the model. */
export class EvaNet extends Module {
  embed = this.registerModule('embed', new Embedding(40, 32));
  layers = this.registerModule('layers', new ModuleList([new EvaBlock(32, 48), new EvaBlock(32, 48)]));
  head = this.registerModule('head', new Linear(32, 40, { bias: false }));
  forward(inputIds: tf.Tensor, _options: { attentionMask?: tf.Tensor } = {}): tf.Tensor {
    return tf.tidy(() => {
      let x = this.embed.call(inputIds) as tf.Tensor;
      for (const layer of this.layers) x = layer.call(x);
      return this.head.call(x) as tf.Tensor;
    });
  }
}

/** spec §7.5: a sees columns 0-7, b and c both see columns 8-15 (equal inputs, different tensors). */
export class ThreeNet extends Module {
  a = this.registerModule('a', new Linear(8, 4, { bias: false }));
  b = this.registerModule('b', new Linear(8, 4, { bias: false }));
  c = this.registerModule('c', new Linear(8, 4, { bias: false }));
  forward(x: tf.Tensor2D): tf.Tensor {
    return tf.tidy(() => {
      const left = tf.slice(x, [0, 0], [-1, 8]);
      const right = () => tf.slice(x, [0, 8], [-1, 8]);
      return tf.addN([this.a.call(left), this.b.call(right()), this.c.call(right())]) as tf.Tensor;
    });
  }
}

/** A model holding the fixture's weights, in eval mode. */
export function loadNet<M extends Module>(build: () => M, tensors: Record<string, tf.Tensor>): M {
  const net = withoutInit(build);
  net.loadStateDict(tensors);
  return net.eval() as M;
}

export function evaNet(): EvaNet {
  const t = readFixture('evanet.safetensors');
  try {
    return loadNet(() => new EvaNet(), t);
  } finally {
    tf.dispose(Object.values(t));
  }
}

/** The fixtures' six batches; with labels (`labels: true`) or without. The caller disposes them. */
export function evaBatches(
  labels: boolean,
): { inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D; labels?: tf.Tensor2D }[] {
  const t = readFixture('batches.safetensors');
  const out = [];
  for (let i = 0; t[`input_ids.${i}`]; i++) {
    const b: { inputIds: tf.Tensor2D; attentionMask: tf.Tensor2D; labels?: tf.Tensor2D } = {
      inputIds: t[`input_ids.${i}`] as tf.Tensor2D,
      attentionMask: t[`attention_mask.${i}`] as tf.Tensor2D,
    };
    if (labels) b.labels = t[`labels.${i}`] as tf.Tensor2D;
    else t[`labels.${i}`]?.dispose();
    out.push(b);
  }
  return out;
}

/**
 * Starts the backend the model-level suites run on: `LORA_EVA_BACKEND`, else wasm (the fast CPU
 * choice), else cpu. The stacked incremental PCA itself runs on every backend in incremental-pca.test.ts.
 */
export async function startTestBackend(): Promise<void> {
  const wanted = process.env.LORA_EVA_BACKEND;
  if (wanted) {
    await initBackend(wanted as 'cpu');
    return;
  }
  try {
    await initBackend('wasm');
  } catch {
    await initBackend('cpu');
  }
}
