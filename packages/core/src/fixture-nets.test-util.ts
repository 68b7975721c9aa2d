import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';
import {
  Conv1d,
  Conv2d,
  Embedding,
  LayerNorm,
  Linear,
  Module,
  ModuleList,
  TransposedLinear,
  gelu,
  withoutInit,
} from '@lora/nn';
import { loraConfigFromJson } from '@lora/core';
import { Net } from './fixture-net.test-util';

/** Where the PEFT fixtures live. */
export const FIX = process.env.LORA_CORE_FIXTURES ?? join(import.meta.dirname, '..', '__fixtures__');

/** Reads a PEFT-saved adapter directory as `{ config, tensors }` (the caller disposes the tensors). */
export const readAdapterFiles = (dir: string) => ({
  config: loraConfigFromJson(JSON.parse(readFileSync(join(FIX, dir, 'adapter_config.json'), 'utf8'))),
  tensors: readFixture(`${dir}/adapter_model.safetensors`),
});

/** Reads a fixture file's tensors (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/** A model built without random init, holding a fixture file's weights. */
export function withFixtureWeights<M extends Module>(build: () => M, file: string): M {
  const net = withoutInit(build);
  const tensors = readFixture(file);
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net;
}

export { Block, Net } from './fixture-net.test-util';

/** The Net with the fixture's base weights (base.safetensors), in eval mode. */
export function baseNet(): Net {
  const net = withoutInit(() => new Net());
  const tensors = readFixture('base.safetensors');
  net.loadStateDict(tensors);
  tf.dispose(Object.values(tensors));
  return net.eval() as Net;
}

/** The EmbNet of tools/oracle/peft_fixtures_net.py: an Embedding, then a Linear. */
export class EmbNet extends Module {
  embed = this.registerModule('embed', new Embedding(20, 8));
  lin = this.registerModule('lin', new Linear(8, 4));
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lin.call(this.embed.call(ids)));
  }
}

/** EmbNet with the fixture's base weights (emb-base.safetensors). */
export const embNet = (): EmbNet => withFixtureWeights(() => new EmbNet(), 'emb-base.safetensors');

/** The ConvNet of tools/oracle/peft_fixtures_net.py: a strided Conv2d, then a Conv1d over the flattened image. */
export class ConvNet extends Module {
  conv = this.registerModule('conv', new Conv2d(3, 6, [3, 3], { stride: 2, padding: 1 }));
  conv1d = this.registerModule('conv1d', new Conv1d(6, 5, 3, { padding: 1 }));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.relu(this.conv.call(x) as tf.Tensor);
      return this.conv1d.call(tf.reshape(h, [h.shape[0] as number, h.shape[1] as number, -1]));
    });
  }
}

/** ConvNet with the fixture's base weights (conv-base.safetensors). */
export const convNet = (): ConvNet => withFixtureWeights(() => new ConvNet(), 'conv-base.safetensors');

/** The ConvDoraNet of tools/oracle/peft_fixtures_net.py: ids → Embedding → strided Conv2d → grouped Conv2d → Conv1d. */
export class ConvDoraNet extends Module {
  embed = this.registerModule('embed', new Embedding(20, 6));
  conv = this.registerModule('conv', new Conv2d(6, 8, [3, 3], { stride: 2, padding: 1 }));
  gconv = this.registerModule('gconv', new Conv2d(8, 8, 3, { padding: 1, groups: 2 }));
  conv1d = this.registerModule('conv1d', new Conv1d(8, 5, 3, { padding: 1 }));
  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = tf.transpose(this.embed.call(ids) as tf.Tensor, [0, 3, 1, 2]);
      h = tf.relu(this.conv.call(h) as tf.Tensor);
      h = tf.relu(this.gconv.call(h) as tf.Tensor);
      return this.conv1d.call(tf.reshape(h, [h.shape[0] as number, h.shape[1] as number, -1])) as tf.Tensor;
    });
  }
}

/** ConvDoraNet with the fixture's base weights (convdora-base.safetensors). */
export const convDoraNet = (): ConvDoraNet => withFixtureWeights(() => new ConvDoraNet(), 'convdora-base.safetensors');

/** The width of GptNet. */
export const GPT_D = 8;

/** The Attention of tools/oracle/fifo_fixtures_net.py: transformers' Conv1D layers, one causal head. */
export class GptAttention extends Module {
  c_attn = this.registerModule('c_attn', new TransposedLinear(3 * GPT_D, GPT_D));
  c_proj = this.registerModule('c_proj', new TransposedLinear(GPT_D, GPT_D));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const [q, k, v] = tf.split(this.c_attn.call(x) as tf.Tensor, 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
      const t = x.shape[1] as number;
      const scores = tf.div(tf.matMul(q, k, false, true), Math.sqrt(GPT_D));
      const future = tf.sub(1, tf.linalg.bandPart(tf.ones([t, t]), -1, 0)); // 1 above the diagonal
      const masked = tf.add(scores, tf.mul(future, -1e30));
      return this.c_proj.call(tf.matMul(tf.softmax(masked), v));
    });
  }
}

/** The Mlp of tools/oracle/fifo_fixtures_net.py. */
export class GptMlp extends Module {
  c_fc = this.registerModule('c_fc', new TransposedLinear(4 * GPT_D, GPT_D));
  c_proj = this.registerModule('c_proj', new TransposedLinear(GPT_D, 4 * GPT_D));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.c_proj.call(gelu(this.c_fc.call(x) as tf.Tensor, 'tanh')));
  }
}

/** The Block of tools/oracle/fifo_fixtures_net.py. */
export class GptBlock extends Module {
  ln_1 = this.registerModule('ln_1', new LayerNorm(GPT_D));
  attn = this.registerModule('attn', new GptAttention());
  ln_2 = this.registerModule('ln_2', new LayerNorm(GPT_D));
  mlp = this.registerModule('mlp', new GptMlp());
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, this.attn.call(this.ln_1.call(x)) as tf.Tensor);
      return tf.add(h, this.mlp.call(this.ln_2.call(h)) as tf.Tensor);
    });
  }
}

/** The GptNet of tools/oracle/fifo_fixtures_net.py: two GPT-2 blocks, a final LayerNorm and a Linear head. */
export class GptNet extends Module {
  h = this.registerModule('h', new ModuleList([new GptBlock(), new GptBlock()]));
  ln_f = this.registerModule('ln_f', new LayerNorm(GPT_D));
  head = this.registerModule('head', new Linear(GPT_D, 4));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = x;
      for (const b of this.h) h = b.call(h);
      return this.head.call(this.ln_f.call(h));
    });
  }
}

/** GptNet with the fixture's base weights (fifo-base.safetensors), in eval mode. */
export const gptNet = (): GptNet => withFixtureWeights(() => new GptNet(), 'fifo-base.safetensors').eval();

/** The CombineNet of tools/oracle/combine_net.py: Embedding → Linear on token ids; Conv2d 3×3 → Conv2d 1×1 → Conv1d on an image. */
export class CombineNet extends Module {
  embed = this.registerModule('embed', new Embedding(12, 6));
  lin = this.registerModule('lin', new Linear(6, 6));
  conv = this.registerModule('conv', new Conv2d(2, 4, [3, 3], { padding: 1 }));
  pw = this.registerModule('pw', new Conv2d(4, 4, 1));
  conv1d = this.registerModule('conv1d', new Conv1d(4, 5, 3, { padding: 1 }));
  forward(ids: tf.Tensor, img: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const t = tf.mean(this.lin.call(this.embed.call(ids)) as tf.Tensor, 1);
      const c = this.pw.call(tf.relu(this.conv.call(img) as tf.Tensor)) as tf.Tensor;
      const d = this.conv1d.call(tf.reshape(c, [c.shape[0] as number, c.shape[1] as number, -1])) as tf.Tensor;
      return tf.concat([t, tf.mean(d, 2)], 1);
    });
  }
}

/** CombineNet with the fixture's base weights (the `base.*` tensors of combine-base.safetensors), in eval mode. */
export function combineNet(): CombineNet {
  const net = withoutInit(() => new CombineNet());
  const t = readFixture('combine-base.safetensors');
  net.loadStateDict(
    Object.fromEntries(
      Object.entries(t)
        .filter(([k]) => k.startsWith('base.'))
        .map(([k, v]) => [k.slice(5), v]),
    ),
  );
  tf.dispose(Object.values(t));
  return net.eval();
}
