import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import { Linear, Module, ModuleList, withoutInit } from '@lora/nn';
import { loraConfigFromJson } from '@lora/core';

/** Where the PEFT fixtures live. */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

/** Reads a PEFT-saved adapter directory as `{ config, tensors }` (the caller disposes the tensors). */
export const readAdapterFiles = (dir: string) => ({
  config: loraConfigFromJson(JSON.parse(readFileSync(join(FIX, dir, 'adapter_config.json'), 'utf8'))),
  tensors: readFixture(`${dir}/adapter_model.safetensors`),
});

/** Reads a fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> => parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/** A model built without random init, holding a fixture file's weights. */
export function withFixtureWeights<M extends Module>(build: () => M, file: string): M {
  const net = withoutInit(build);
  const tensors = readFixture(file);
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net;
}

/** The Block of tools/oracle/peft_fixtures_net.py. */
export class Block extends Module {
  q_proj = this.registerModule('q_proj', new Linear(8, 8));
  v_proj = this.registerModule('v_proj', new Linear(8, 8));
  mlp = this.registerModule('mlp', new Linear(8, 16));
  out = this.registerModule('out', new Linear(16, 8));
  forward(h: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.add(tf.add(tf.add(h, this.out.call(tf.relu(this.mlp.call(h)))), tf.mul(this.q_proj.call(h), 0.5)), this.v_proj.call(h)));
  }
}

/** The Net of tools/oracle/peft_fixtures_net.py. */
export class Net extends Module {
  layers = this.registerModule('layers', new ModuleList([new Block(), new Block()]));
  head = this.registerModule('head', new Linear(8, 4));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = x;
      for (const l of this.layers) h = l.call(h);
      return this.head.call(h);
    });
  }
}

/** The Net with the fixture's base weights (base.safetensors), in eval mode. */
export function baseNet(): Net {
  const net = withoutInit(() => new Net());
  const tensors = readFixture('base.safetensors');
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net.eval() as Net;
}
