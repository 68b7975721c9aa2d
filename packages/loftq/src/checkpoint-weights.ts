import * as tf from '@tensorflow/tfjs-core';
import {
  type ByteSource,
  type FileSource,
  type ModelFiles,
  type SafetensorsEntry,
  byteSourceOf,
  decodeEntry,
  openFiles,
  readSafetensorsHeaderFrom,
} from '@lora/tensor';

/** Reads single tensors of a safetensors checkpoint on demand, a tensor's bytes at a time. */
export interface CheckpointWeights {
  /** Every tensor name the checkpoint has. */
  names: string[];
  /** The tensor as float32 (bf16 and f16 widened), or null when the checkpoint has no such name. The caller owns it. */
  get(name: string): Promise<tf.Tensor | null>;
  close(): Promise<void>;
}

/**
 * Opens a checkpoint the way PEFT's `_SafetensorLoader` does: a directory (or set of files) holding
 * `model.safetensors`, or `model.safetensors.index.json` and its shards; a path ending in
 * `.safetensors` is that file. Only headers are read here.
 */
export async function openCheckpointWeights(modelPath: ModelFiles): Promise<CheckpointWeights> {
  let files: FileSource;
  let single = 'model.safetensors';
  if (typeof modelPath === 'string' && modelPath.endsWith('.safetensors')) {
    const cut = Math.max(modelPath.lastIndexOf('/'), modelPath.lastIndexOf('\\'));
    single = modelPath.slice(cut + 1);
    files = await openFiles(cut < 0 ? '.' : modelPath.slice(0, cut) || '/', { what: 'model directory' });
  } else files = await openFiles(modelPath, { what: 'model directory' });
  const open = async (name: string): Promise<ByteSource> =>
    files.open ? files.open(name) : byteSourceOf(await files.bytes(name), `${files.label}/${name}`);
  const sources = new Map<string, ByteSource>();
  const where = new Map<string, { file: string; entry: SafetensorsEntry }>();
  const close = async () => {
    await Promise.all([...sources.values()].map((s) => s.close().catch(() => undefined)));
  };
  try {
    let shards: string[];
    if (await files.has(single)) shards = [single];
    else if (await files.has('model.safetensors.index.json')) {
      const index = JSON.parse(await files.text('model.safetensors.index.json')) as {
        weight_map?: Record<string, string>;
      };
      shards = [...new Set(Object.values(index.weight_map ?? {}))];
      if (shards.length === 0) throw new Error(`${files.label}/model.safetensors.index.json has no weight_map`);
    } else
      throw new Error(
        `Could not find file for ${files.label}/${single}, ensure that there is a (sharded) safetensors file of the model (PyTorch .bin checkpoints cannot be read a tensor at a time)`,
      );
    for (const file of shards) {
      const source = await open(file);
      sources.set(file, source);
      for (const entry of (await readSafetensorsHeaderFrom(source)).entries) where.set(entry.name, { file, entry });
    }
  } catch (e) {
    await close();
    throw e;
  }
  return {
    names: [...where.keys()],
    async get(name) {
      const at = where.get(name);
      if (!at) return null;
      const source = sources.get(at.file) as ByteSource;
      const bytes = await source.read(at.entry.begin, at.entry.end);
      const d = decodeEntry(bytes, { ...at.entry, begin: 0, end: bytes.length }, source.label);
      return tf.tensor(d.values, d.shape, d.dtype);
    },
    close,
  };
}
