import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import { Embedding, Linear, Module, TransposedLinear, withoutInit } from '@lora/nn';

/** The PEFT fixtures of tools/oracle/intruders_fixtures.py. */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

export const H = 24;

/** tools/oracle/intruders_net.py's IntruderNet: an Embedding, square / tall / wide Linears, and `big` (off the forward path). */
export class IntruderNet extends Module {
  embed = this.registerModule('embed', new Embedding(30, H));
  q_proj = this.registerModule('q_proj', new Linear(H, H, { bias: false }));
  up_proj = this.registerModule('up_proj', new Linear(H, 40, { bias: false }));
  down_proj = this.registerModule('down_proj', new Linear(40, H, { bias: false }));
  big = this.registerModule('big', new Linear(128, 112, { bias: false }));
  head = this.registerModule('head', new Linear(H, 5));
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = this.embed.call(ids) as tf.Tensor;
      h = tf.add(h, this.q_proj.call(h));
      h = tf.add(h, this.down_proj.call(tf.relu(this.up_proj.call(h))));
      return this.head.call(h);
    });
  }
}

/** tools/oracle/intruders_net.py's IntruderGpt: transformers' Conv1D layers (weights [in, out]). */
export class IntruderGpt extends Module {
  c_fc = this.registerModule('c_fc', new TransposedLinear(36, H));
  c_proj = this.registerModule('c_proj', new TransposedLinear(H, 36));
  c_sq = this.registerModule('c_sq', new TransposedLinear(H, H));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.c_sq.call(this.c_proj.call(tf.relu(this.c_fc.call(x)))));
  }
}

/** A fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/** The net with the fixture's base weights, in eval mode. */
export function baseOf(build: () => Module, net: 'net' | 'gpt'): Module {
  const model = withoutInit(build);
  const tensors = readFixture(`${net}/base.safetensors`);
  model.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return model.eval();
}

export interface SettingRecord {
  options: { top_k?: number; threshold_epsilon?: number; mitigation_lambda?: number };
  lines: string[];
  intruders: Record<string, number>;
  scaling: Record<string, number>;
  forward: string;
  active_adapters: string[];
}

export const records = (net: 'net' | 'gpt'): Record<string, SettingRecord> =>
  JSON.parse(readFileSync(join(FIX, net, 'record.json'), 'utf8'));

/** PEFT's options in camelCase. */
export const optionsOf = (r: SettingRecord) => ({
  ...(r.options.top_k !== undefined ? { topK: r.options.top_k } : {}),
  ...(r.options.threshold_epsilon !== undefined ? { thresholdEpsilon: r.options.threshold_epsilon } : {}),
  ...(r.options.mitigation_lambda !== undefined ? { mitigationLambda: r.options.mitigation_lambda } : {}),
});
