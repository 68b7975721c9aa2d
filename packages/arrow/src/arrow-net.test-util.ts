/** The fixtures' readers (Node); the ArrowNet itself is in arrow-net-module.test-util.ts, which a browser bundle takes too. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import { withoutInit } from '@lora/nn';
import { ArrowNet } from './arrow-net-module.test-util';

export { ArrowNet };

/** Where the PEFT fixtures live. */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

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
