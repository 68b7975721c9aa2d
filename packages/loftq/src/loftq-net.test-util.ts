import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module, withoutInit } from '@lora/nn';
import { readFixture } from './oracle.test-util';

/** The LoftqNet of tools/oracle/loftq_net.py: head(x + down(relu(up(x)))). */
export class LoftqNet extends Module {
  up = this.registerModule('up', new Linear(16, 32));
  down = this.registerModule('down', new Linear(32, 16));
  head = this.registerModule('head', new Linear(16, 8));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.head.call(tf.add(x, this.down.call(tf.relu(this.up.call(x))))));
  }
}

/** The LoftqNet with the fixture's base weights (net-base.safetensors), in eval mode. */
export function baseNet(): LoftqNet {
  const net = withoutInit(() => new LoftqNet());
  const tensors = readFixture('net-base.safetensors');
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net.eval() as LoftqNet;
}
