import { mkdtempSync, readFileSync, readdirSync, writeFileSync, mkdirSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { SafetensorsError, decodeEntry, initBackend, readSafetensorsHeader, serializeSafetensors } from '@lora/tensor';
import { loadSafetensors, rewriteSafetensors, saveSafetensors, writeFileAtomic } from '@lora/tensor/node';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
const shardedExpected = JSON.parse(readFileSync(join(FIXTURES, 'sharded.expected.json'), 'utf8')) as Record<
  string,
  number[]
>;

beforeAll(async () => {
  await initBackend('cpu');
});

describe('loadSafetensors', () => {
  it('reads a sharded checkpoint written by transformers-style code, from its index or its directory', async () => {
    for (const path of [join(FIXTURES, 'sharded'), join(FIXTURES, 'sharded', 'model.safetensors.index.json')]) {
      const before = tf.memory().numTensors;
      const { tensors, files, indexMetadata, metadata } = await loadSafetensors(path);
      expect(files.length).toBe(2);
      expect(metadata).toEqual({ format: 'pt' });
      expect(indexMetadata?.total_size).toBe(Object.values(shardedExpected).reduce((s, v) => s + 4 * v.length, 0));
      expect(Object.keys(tensors).sort()).toEqual(Object.keys(shardedExpected).sort());
      for (const [name, values] of Object.entries(shardedExpected))
        expect(Array.from(await tensors[name]!.data())).toEqual(values.map(Math.fround));
      tf.dispose(Object.values(tensors));
      expect(tf.memory().numTensors).toBe(before);
    }
  });

  it('reads a single file from its directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-st-'));
    copyFileSync(join(FIXTURES, 'python-dtypes.safetensors'), join(dir, 'model.safetensors'));
    const { tensors, files } = await loadSafetensors(dir);
    expect(files).toEqual([join(dir, 'model.safetensors')]);
    expect(tensors.f32_random!.shape).toEqual([3, 4, 5]);
    tf.dispose(Object.values(tensors));
  });

  it('rejects an index that names a tensor its shard lacks, or a shard outside the directory, freeing everything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-st-'));
    for (const f of readdirSync(join(FIXTURES, 'sharded'))) copyFileSync(join(FIXTURES, 'sharded', f), join(dir, f));
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    index.weight_map['model.missing.weight'] = 'model-00002-of-00002.safetensors';
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    const before = tf.memory().numTensors;
    await expect(loadSafetensors(dir)).rejects.toThrow(
      /tensor 'model.missing.weight' weight_map: the index .* puts 'model.missing.weight' in this shard, which does not contain it/,
    );
    expect(tf.memory().numTensors).toBe(before);
    index.weight_map['model.missing.weight'] = '../../etc/passwd';
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    await expect(loadSafetensors(dir)).rejects.toThrow(/points outside the checkpoint directory/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map": 3}');
    await expect(loadSafetensors(dir)).rejects.toBeInstanceOf(SafetensorsError);
  });

  it('asks which file to read when a directory is ambiguous', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-st-'));
    for (const n of ['a', 'b']) copyFileSync(join(FIXTURES, 'js-written.safetensors'), join(dir, `${n}.safetensors`));
    await expect(loadSafetensors(dir)).rejects.toThrow(
      /directory holds 2 .safetensors files and 0 indexes; pass the file/,
    );
  });
});

describe('saveSafetensors', () => {
  it('writes atomically: a failed save leaves the old file and no temporary file behind', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-st-'));
    const path = join(dir, 'adapter_model.safetensors');
    const a = tf.tensor1d([1, 2, 3]);
    await saveSafetensors(path, { a }, { metadata: { format: 'pt' } });
    const first = readFileSync(path);
    const disposed = tf.tensor1d([4]);
    disposed.dispose();
    await expect(saveSafetensors(path, { a, b: disposed })).rejects.toThrow(
      /tensor 'b' data: tensor is already disposed/,
    );
    expect(readFileSync(path).equals(first)).toBe(true);
    expect(readdirSync(dir)).toEqual(['adapter_model.safetensors']);
    const { tensors } = await loadSafetensors(path);
    expect(Array.from(await tensors.a!.data())).toEqual([1, 2, 3]);
    tf.dispose([a, ...Object.values(tensors)]);
  });

  it('removes its temporary file when the rename fails', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-st-'));
    mkdirSync(join(dir, 'occupied'));
    mkdirSync(join(dir, 'occupied', 'x'));
    await expect(writeFileAtomic(join(dir, 'occupied'), 'data')).rejects.toThrow();
    expect(readdirSync(dir)).toEqual(['occupied']);
  });
});

describe('rewriteSafetensors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'lora-rewrite-'));
  const input = join(dir, 'in.safetensors');

  beforeAll(async () => {
    const bytes = await serializeSafetensors(
      {
        a: { dtype: 'float32', shape: [2, 3], values: Float32Array.from([1, 2, 3, 4, 5, 6]) },
        b: { dtype: 'float32', shape: [3], values: Float32Array.from([0.1, 0.2, 0.3]) },
        c: { dtype: 'int32', shape: [2], values: Int32Array.from([7, -8]) },
      },
      { metadata: { format: 'pt' }, dtype: { a: 'BF16', b: 'F32', c: 'I64' } },
    );
    writeFileSync(input, bytes);
  });

  it('keeps the header and untouched tensors byte for byte, and re-encodes replaced ones in their own dtype', async () => {
    const out = join(dir, 'out.safetensors');
    const seen: string[] = [];
    let last = 0;
    const { replaced, bytes } = await rewriteSafetensors(
      input,
      out,
      async (name, file) => {
        seen.push(name);
        if (name !== 'a') return undefined;
        const a = await file.read('a');
        const b = await file.read('b'); // another tensor of the same file, e.g. a bias
        return a.values.map((v, i) => v * 2 + (b.values[i % 3] as number));
      },
      { onProgress: (done) => (last = done) },
    );
    const before = new Uint8Array(readFileSync(input));
    const after = new Uint8Array(readFileSync(out));
    expect(replaced).toEqual(['a']);
    expect([bytes, last, after.length]).toEqual([before.length, before.length, before.length]);
    expect(seen.sort()).toEqual(['a', 'b', 'c']);
    const header = readSafetensorsHeader(before);
    expect(Array.from(after.subarray(0, header.dataStart))).toEqual(Array.from(before.subarray(0, header.dataStart)));
    const entry = (n: string) => header.entries.find((e) => e.name === n)!;
    for (const n of ['b', 'c'])
      expect(Array.from(after.subarray(entry(n).begin, entry(n).end))).toEqual(
        Array.from(before.subarray(entry(n).begin, entry(n).end)),
      );
    // a is still BF16: 2·v + b, rounded to bf16 (every value here is exact in bf16 but for the 0.1-steps)
    const a = decodeEntry(after, entry('a'));
    const want = [1, 2, 3, 4, 5, 6].map((v, i) => Math.fround(v * 2 + Math.fround([0.1, 0.2, 0.3][i % 3] as number)));
    expect(entry('a').dtype).toBe('BF16');
    expect(a.values.length).toBe(6);
    for (const [i, v] of Array.from(a.values).entries())
      expect(Math.abs(v - (want[i] as number))).toBeLessThan(Math.abs(want[i] as number) * 2 ** -8);
    // replacing nothing gives the same bytes (a Python-written file)
    const py = join(
      FIXTURES,
      'sharded',
      readdirSync(join(FIXTURES, 'sharded')).find((f) => f.endsWith('.safetensors'))!,
    );
    await rewriteSafetensors(py, join(dir, 'same.safetensors'), async () => undefined);
    expect(Buffer.compare(readFileSync(py), readFileSync(join(dir, 'same.safetensors')))).toBe(0);
  });

  it('leaves nothing behind when the replacement is wrong or fails, and names the tensor', async () => {
    const out = join(dir, 'bad.safetensors');
    await expect(
      rewriteSafetensors(input, out, async (n) => (n === 'b' ? new Float32Array(2) : undefined)),
    ).rejects.toThrow(/tensor 'b'.*2 values; the tensor's shape \[3\] holds 3/);
    await expect(
      rewriteSafetensors(input, out, async (n) => {
        if (n === 'c') throw new Error('merge failed');
        return undefined;
      }),
    ).rejects.toThrow('merge failed');
    expect(readdirSync(dir).filter((f) => f.startsWith('bad') || f.startsWith('.bad'))).toEqual([]);
    writeFileSync(join(dir, 'trunc.safetensors'), readFileSync(input).subarray(0, 40));
    await expect(rewriteSafetensors(join(dir, 'trunc.safetensors'), out, async () => undefined)).rejects.toThrow(
      SafetensorsError,
    );
  });
});
