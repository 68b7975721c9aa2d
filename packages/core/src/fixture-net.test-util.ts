/**
 * The Net of tools/oracle/peft_fixtures_net.py, without Node imports (the browser smoke run uses it
 * too); `fixture-nets.test-util.ts` re-exports it with the fixture readers.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module, ModuleList } from '@lora/nn';

/** The Block of tools/oracle/peft_fixtures_net.py. */
export class Block extends Module {
  q_proj = this.registerModule('q_proj', new Linear(8, 8));
  v_proj = this.registerModule('v_proj', new Linear(8, 8));
  mlp = this.registerModule('mlp', new Linear(8, 16));
  out = this.registerModule('out', new Linear(16, 8));
  forward(h: tf.Tensor): tf.Tensor {
    return tf.tidy(() =>
      tf.add(
        tf.add(tf.add(h, this.out.call(tf.relu(this.mlp.call(h)))), tf.mul(this.q_proj.call(h), 0.5)),
        this.v_proj.call(h),
      ),
    );
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
