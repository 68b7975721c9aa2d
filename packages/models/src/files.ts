import * as tf from '@tensorflow/tfjs-core';
import {
  type ByteSource,
  type FileSource,
  type SafetensorsEntry,
  type SafetensorsHeader,
  SafetensorsError,
  byteSourceOf,
  decodeEntry,
  readSafetensorsHeaderFrom,
  streamSafetensors,
} from '@lora/tensor';

/** One tensor of a checkpoint as its header describes it, before any data is read. */
export interface CheckpointEntry extends SafetensorsEntry {
  /** The file holding it (`model.safetensors`, or a shard). */
  file: string;
}

/**
 * A checkpoint's tensors, known from the headers alone: names, dtypes and shapes can be checked against
 * a model before a byte of data is read, then `read` decodes the tensors one at a time, a file at a time.
 */
export interface CheckpointPlan {
  /** Every tensor, by name (for a sharded checkpoint: those the index lists, each in its shard). */
  entries: Map<string, CheckpointEntry>;
  /**
   * Decodes the tensors (all, or those named) one at a time and hands each to `onTensor`, which owns it
   * (and disposes it). Memory stays near one tensor beyond what `onTensor` keeps. Runs once.
   */
  read(
    onTensor: (name: string, tensor: tf.Tensor) => void,
    names?: ReadonlySet<string>,
    options?: CheckpointReadOptions,
  ): Promise<void>;
  /** Releases the open files (after `read`, or instead of it). */
  close(): Promise<void>;
}

/** Options of {@link CheckpointPlan.read}. */
export interface CheckpointReadOptions {
  /**
   * Offered each BF16 / F16 tensor's raw codes (row-major, as in the file) before it is widened: return
   * true to take them (then `onTensor` is not called for it), false to have it decoded as usual.
   */
  onHalfCodes?: (name: string, codes: Uint16Array, entry: CheckpointEntry) => boolean;
}

async function openShard(source: FileSource, name: string): Promise<ByteSource> {
  return source.open ? source.open(name) : byteSourceOf(await source.bytes(name), `${source.label}/${name}`);
}

/**
 * Reads the headers of a checkpoint, `model.safetensors` or the shards named by
 * `model.safetensors.index.json`, and returns its tensors' entries and a reader. Nothing but headers is
 * read until `read` is called; a file missing or malformed fails here, before any tensor exists.
 *
 * @example
 * ```ts
 * const plan = await planCheckpoint(await openFiles('SmolLM-135M'));
 * console.log(plan.entries.get('lm_head.weight')?.dtype); // 'BF16'
 * await plan.read((name, t) => { model.stateDict()[name]?.assign(t); t.dispose(); });
 * await plan.close();
 * ```
 */
export async function planCheckpoint(source: FileSource): Promise<CheckpointPlan> {
  const files: { name: string; bytes: ByteSource; header: SafetensorsHeader; wanted: Set<string> }[] = [];
  const entries = new Map<string, CheckpointEntry>();
  const close = async () => {
    await Promise.all(files.map((f) => f.bytes.close().catch(() => undefined)));
  };
  const add = async (name: string, wanted?: Set<string>) => {
    const bytes = await openShard(source, name);
    try {
      const header = await readSafetensorsHeaderFrom(bytes);
      files.push({ name, bytes, header, wanted: wanted ?? new Set(header.entries.map((e) => e.name)) });
      return header;
    } catch (e) {
      await bytes.close().catch(() => undefined);
      throw e;
    }
  };
  try {
    if (await source.has('model.safetensors.index.json')) {
      const indexName = `${source.label}/model.safetensors.index.json`;
      let index: { weight_map?: unknown };
      try {
        index = JSON.parse(await source.text('model.safetensors.index.json'));
      } catch (e) {
        throw new SafetensorsError(
          { file: indexName, field: 'header' },
          `index is not valid JSON (${(e as Error).message})`,
        );
      }
      const weightMap = index?.weight_map;
      if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap))
        throw new SafetensorsError({ file: indexName, field: 'weight_map' }, 'index has no weight_map object');
      const byShard = new Map<string, Set<string>>();
      for (const [tensor, shard] of Object.entries(weightMap as Record<string, unknown>)) {
        if (typeof shard !== 'string' || shard.length === 0 || shard.includes('/') || shard.includes('\\')) {
          throw new SafetensorsError(
            { file: indexName, field: 'weight_map' },
            `shard ${JSON.stringify(shard)} of '${tensor}' must be a file name in the checkpoint's directory`,
          );
        }
        let names = byShard.get(shard);
        if (!names) byShard.set(shard, (names = new Set()));
        names.add(tensor);
      }
      for (const [shard, names] of byShard) {
        const header = await add(shard, names);
        const inFile = new Map(header.entries.map((e) => [e.name, e]));
        for (const tensor of names) {
          const entry = inFile.get(tensor);
          if (!entry)
            throw new SafetensorsError(
              { file: indexName, field: 'weight_map' },
              `shards lack tensors the index lists: '${tensor}' is not in ${shard}`,
            );
          entries.set(tensor, { ...entry, file: shard });
        }
      }
    } else if (await source.has('model.safetensors')) {
      const header = await add('model.safetensors');
      for (const e of header.entries) entries.set(e.name, { ...e, file: 'model.safetensors' });
    } else {
      const names = (await source.list()).filter((n) => n.endsWith('.safetensors'));
      throw new Error(
        `${source.label}: no model.safetensors or model.safetensors.index.json${names.length ? ` (found ${names.join(', ')})` : ''}; PyTorch .bin checkpoints are not supported, convert them to safetensors`,
      );
    }
  } catch (e) {
    await close();
    throw e;
  }
  return {
    entries,
    close,
    async read(onTensor, names, options = {}) {
      const { onHalfCodes } = options;
      for (const f of files) {
        const want = names ? new Set([...f.wanted].filter((n) => names.has(n))) : f.wanted;
        if (want.size === 0) continue;
        if (!onHalfCodes) {
          for await (const { entry, tensor } of streamSafetensors(f.bytes, { header: f.header, names: want }))
            onTensor(entry.name, tf.tensor(tensor.values, tensor.shape, tensor.dtype));
          continue;
        }
        // the same reads as streamSafetensors, with the 16-bit codes offered before they are widened
        for (const entry of f.header.entries) {
          if (!want.has(entry.name)) continue;
          const bytes = await f.bytes.read(entry.begin, entry.end);
          if (entry.dtype === 'BF16' || entry.dtype === 'F16') {
            const own = new Uint8Array(bytes.length);
            own.set(bytes); // aligned, and not a view into a larger read
            const codes = new Uint16Array(own.buffer);
            if (onHalfCodes(entry.name, codes, { ...entry, file: f.name })) continue;
          }
          const tensor = decodeEntry(bytes, { ...entry, begin: 0, end: bytes.length }, f.bytes.label);
          onTensor(entry.name, tf.tensor(tensor.values, tensor.shape, tensor.dtype));
        }
      }
    },
  };
}

/**
 * Reads every tensor of a checkpoint: `model.safetensors`, or the shards named by
 * `model.safetensors.index.json`, one tensor at a time. The caller owns the tensors.
 */
export async function readCheckpoint(source: FileSource): Promise<Record<string, tf.Tensor>> {
  const plan = await planCheckpoint(source);
  // null-prototype: a tensor named `__proto__` is a key like any other
  const out: Record<string, tf.Tensor> = Object.create(null);
  try {
    await plan.read((name, t) => {
      out[name] = t;
    });
    return out;
  } catch (e) {
    tf.dispose(Object.values(out));
    throw e;
  } finally {
    await plan.close();
  }
}
