/** The ArrowNet of tools/oracle/arrow_net.py, with the fixtures' readers. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import { Embedding, Linear, Module, TransposedLinear, withoutInit } from '@lora/nn';

/** Where the PEFT fixtures live. */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

/** ids [B, S] → Embedding(20, 12) → lin0 (12 → 16) → relu → proj (Conv1D 16 → 10) → h + mix(h) → head (10 → 6). */
export class ArrowNet extends Module {
  embed = this.registerModule('embed', new Embedding(20, 12));
  lin0 = this.registerModule('lin0', new Linear(12, 16));
  proj = this.registerModule('proj', new TransposedLinear(10, 16));
  mix = this.registerModule('mix', new Linear(10, 10));
  head = this.registerModule('head', new Linear(10, 6));
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = this.proj.call(tf.relu(this.lin0.call(this.embed.call(ids)) as tf.Tensor)) as tf.Tensor;
      return this.head.call(tf.add(h, this.mix.call(h) as tf.Tensor));
    });
  }
}

/** Reads a fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/** An ArrowNet with the fixtures' base weights, in eval mode. */
export function baseNet(): ArrowNet {
  const net = withoutInit(() => new ArrowNet());
  const tensors = readFixture('net-base.safetensors');
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net.eval() as ArrowNet;
}

/** The fixture adapter directories: five task experts, two general adapters, and ones Arrow refuses. */
export const TASKS = ['task-a', 'task-b', 'task-c', 'task-d', 'task-e'].map((d) => join(FIX, d));
export const GENERAL = ['general-a', 'general-b'].map((d) => join(FIX, d));
export const fixtureDir = (name: string) => join(FIX, name);

/** The adapter directory's two files, in memory (what a browser has). */
export function adapterFiles(dir: string): Record<string, Uint8Array> {
  return Object.fromEntries(
    ['adapter_config.json', 'adapter_model.safetensors'].map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]),
  );
}
