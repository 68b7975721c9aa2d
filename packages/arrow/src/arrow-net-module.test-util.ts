/** The ArrowNet of tools/oracle/arrow_net.py, without Node imports (the browser smoke run uses it too). */
import * as tf from '@tensorflow/tfjs-core';
import { Embedding, Linear, Module, TransposedLinear } from '@lora/nn';

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
