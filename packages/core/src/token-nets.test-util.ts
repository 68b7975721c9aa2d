import * as tf from '@tensorflow/tfjs-core';
import { Embedding, Linear, Module, withoutInit } from '@lora/nn';
import { readFixture } from './fixture-nets.test-util';

/** The TokNet of tools/oracle/tokens_fixtures.py: an input embedding, a Linear, an output layer over the vocabulary. */
export class TokNet extends Module {
  embed_tokens = this.registerModule('embed_tokens', new Embedding(20, 8));
  lin = this.registerModule('lin', new Linear(8, 8));
  lm_head = this.registerModule('lm_head', new Linear(8, 20, { bias: false }));

  /** `tied`: lm_head's weight is the embedding's (as transformers' tie_word_embeddings). */
  constructor(tied = false) {
    super();
    if (tied) this.lm_head.setParameter('weight', this.embed_tokens.weight);
  }

  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lm_head.call(tf.tanh(this.lin.call(this.embed_tokens.call(ids)))) as tf.Tensor);
  }
}

/** TokNet with the fixture's base weights (tokens-base / tokens-tied-base), in eval mode. */
export function tokNet(tied = false): TokNet {
  const net = withoutInit(() => new TokNet(tied));
  const tensors = readFixture(tied ? 'tokens-tied-base.safetensors' : 'tokens-base.safetensors');
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net.eval();
}
