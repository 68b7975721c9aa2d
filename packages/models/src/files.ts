import type * as tf from '@tensorflow/tfjs-core';
import { type FileSource, SafetensorsError, parseSafetensors } from '@lora/tensor';

/**
 * Reads every tensor of a checkpoint: `model.safetensors`, or the shards named by
 * `model.safetensors.index.json`. Shards are parsed one at a time. The caller owns the tensors.
 */
export async function readCheckpoint(source: FileSource): Promise<Record<string, tf.Tensor>> {
  const out: Record<string, tf.Tensor> = {};
  const release = () => {
    for (const t of Object.values(out)) t.dispose();
  };
  try {
    if (await source.has('model.safetensors.index.json')) {
      const indexName = `${source.label}/model.safetensors.index.json`;
      let index: { weight_map?: Record<string, string> };
      try {
        index = JSON.parse(await source.text('model.safetensors.index.json'));
      } catch (e) {
        throw new SafetensorsError(
          { file: indexName, field: 'header' },
          `index is not valid JSON (${(e as Error).message})`,
        );
      }
      const weightMap = index.weight_map;
      if (typeof weightMap !== 'object' || weightMap === null)
        throw new SafetensorsError({ file: indexName, field: 'weight_map' }, 'index has no weight_map object');
      const shards = [...new Set(Object.values(weightMap))];
      for (const shard of shards) {
        if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
          throw new SafetensorsError(
            { file: indexName, field: 'weight_map' },
            `shard '${shard}' must be a file name in the checkpoint's directory`,
          );
        }
        const { tensors } = parseSafetensors(await source.bytes(shard), { file: `${source.label}/${shard}` });
        for (const [name, t] of Object.entries(tensors)) {
          if (weightMap[name] === shard) out[name] = t;
          else t.dispose();
        }
      }
      const missing = Object.keys(weightMap).filter((n) => !(n in out));
      if (missing.length)
        throw new SafetensorsError(
          { file: indexName, field: 'weight_map' },
          `shards lack tensors the index lists: ${missing.slice(0, 5).join(', ')}`,
        );
      return out;
    }
    if (await source.has('model.safetensors')) {
      return parseSafetensors(await source.bytes('model.safetensors'), { file: `${source.label}/model.safetensors` })
        .tensors;
    }
    const names = (await source.list()).filter((n) => n.endsWith('.safetensors'));
    throw new Error(
      `${source.label}: no model.safetensors or model.safetensors.index.json${names.length ? ` (found ${names.join(', ')})` : ''}; PyTorch .bin checkpoints are not supported, convert them to safetensors`,
    );
  } catch (e) {
    release();
    throw e;
  }
}
