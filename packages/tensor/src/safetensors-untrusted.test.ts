/**
 * Files from the internet: what a hostile or careless safetensors file or index must not do (hang, blow
 * up, crash with a raw JS error, drop or leak a tensor, read outside its directory), each case as it
 * was found.
 */
import { cpSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  FileAccessError,
  MAX_HEADER_DEPTH,
  MAX_TENSORS,
  SafetensorsError,
  initBackend,
  parseSafetensors,
  serializeSafetensors,
} from '@lora/tensor';
import { loadSafetensors } from '@lora/tensor/node';

/**
 * This process's CPU time in ms: the guards below catch a quadratic or exponential parse (minutes),
 * and CPU time, unlike wall time, does not grow with the machine's load.
 */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');

beforeAll(async () => {
  await initBackend('cpu');
});

/** A file with this header text (padded to 8 bytes) and `data` after it. */
function fileWith(header: string | Uint8Array, data = new Uint8Array(0)): Uint8Array {
  let h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  if (h.length % 8) {
    const padded = new Uint8Array(h.length + 8 - (h.length % 8)).fill(0x20);
    padded.set(h);
    h = padded;
  }
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function rejection(f: () => unknown): SafetensorsError {
  try {
    f();
  } catch (e) {
    if (e instanceof SafetensorsError) return e;
    throw new Error(`expected a SafetensorsError, got ${String(e)}`);
  }
  throw new Error('expected a SafetensorsError, but the file was accepted');
}

describe('parseSafetensors on untrusted bytes', () => {
  it('keeps a tensor named __proto__ (and constructor) as a tensor, with nothing leaked', async () => {
    // written out: an object literal's __proto__ would set its prototype, not a key
    const header =
      '{"__proto__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"constructor":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    const before = tf.memory().numTensors;
    const { tensors } = parseSafetensors(fileWith(header, new Uint8Array(new Float32Array([1.5, 2.5]).buffer)));
    expect(Object.keys(tensors).sort()).toEqual(['__proto__', 'constructor']);
    const proto = Object.getOwnPropertyDescriptor(tensors, '__proto__')?.value as tf.Tensor;
    expect(Array.from(await proto.data())).toEqual([1.5]);
    expect(Array.from(await (tensors.constructor as unknown as tf.Tensor).data())).toEqual([2.5]);
    tf.dispose(Object.values(tensors));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses a UTF-8 byte-order mark before the header, as the Rust reader does', () => {
    const json = new TextEncoder().encode(JSON.stringify({ a: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }));
    const withBom = new Uint8Array([0xef, 0xbb, 0xbf, ...json]);
    expect(rejection(() => parseSafetensors(fileWith(withBom, new Uint8Array(1)))).message).toMatch(/byte-order mark/);
  });

  it("refuses dims and offsets written 8.0 or 8e0 (the Rust reader's serde refuses floats for usize)", () => {
    for (const dim of ['2.0', '2e0', '2E0', '0.2e1']) {
      const e = rejection(() =>
        parseSafetensors(fileWith(`{"a":{"dtype":"U8","shape":[${dim}],"data_offsets":[0,2]}}`, new Uint8Array(2))),
      );
      expect(e.tensor).toBe('a');
      expect(e.field).toBe('shape');
      expect(e.message).toContain('not an integer literal');
    }
    const e = rejection(() =>
      parseSafetensors(fileWith('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2.0]}}', new Uint8Array(2))),
    );
    expect(e.field).toBe('data_offsets');
    // the same values as integers are a valid file
    const ok = parseSafetensors(fileWith('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', new Uint8Array(2)));
    tf.dispose(Object.values(ok.tensors));
  });

  it('answers deep nesting with a SafetensorsError (not a stack overflow), quickly', () => {
    for (const depth of [MAX_HEADER_DEPTH + 1, 4116, 100_000]) {
      const header = `{"a":{"dtype":"F32","shape":${'['.repeat(depth)}${']'.repeat(depth)},"data_offsets":[0,0]}}`;
      const t0 = cpuMs();
      const e = rejection(() => parseSafetensors(fileWith(header)));
      expect(e.message).toMatch(/nests deeper/);
      expect(cpuMs() - t0).toBeLessThan(1000);
    }
    // nesting the Rust reader takes (a shape of nested arrays is still refused, for its type)
    const e = rejection(() =>
      parseSafetensors(fileWith(`{"a":{"dtype":"F32","shape":[[[[0]]]],"data_offsets":[0,0]}}`)),
    );
    expect(e.field).toBe('shape');
  });

  it(`refuses more than ${MAX_TENSORS} tensors in one file before parsing them`, () => {
    const parts: string[] = [];
    for (let i = 0; i <= MAX_TENSORS; i++) parts.push(`"t${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
    const t0 = cpuMs();
    const e = rejection(() => parseSafetensors(fileWith(`{${parts.join(',')}}`)));
    expect(e.message).toMatch(/more than 262144 tensors/);
    expect(cpuMs() - t0).toBeLessThan(10_000);
  });
});

describe('loadSafetensors on an untrusted sharded checkpoint', () => {
  function checkpoint(): string {
    const dir = mkdtempSync(join(tmpdir(), 'lora-untrusted-'));
    cpSync(join(FIXTURES, 'sharded'), dir, { recursive: true });
    return dir;
  }

  it('refuses a shard that is a link to a file outside the checkpoint directory', async () => {
    const outside = mkdtempSync(join(tmpdir(), 'lora-outside-'));
    const dir = checkpoint();
    cpSync(join(dir, 'model-00002-of-00002.safetensors'), join(outside, 'secret.safetensors'));
    const { rmSync } = await import('node:fs');
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    symlinkSync(join(outside, 'secret.safetensors'), join(dir, 'model-00002-of-00002.safetensors'));
    const before = tf.memory().numTensors;
    await expect(loadSafetensors(dir)).rejects.toThrow(/is a link to .*outside the checkpoint directory/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('follows links inside the checkpoint directory and into a Hugging Face cache entry’s blobs', async () => {
    const root = mkdtempSync(join(tmpdir(), 'lora-hub-'));
    const snapshot = join(root, 'models--org--tiny', 'snapshots', 'abc123');
    const blobs = join(root, 'models--org--tiny', 'blobs');
    mkdirSync(snapshot, { recursive: true });
    mkdirSync(blobs);
    const src = checkpoint();
    for (const [i, f] of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'].entries()) {
      cpSync(join(src, f), join(blobs, `blob${i}`));
      symlinkSync(`../../blobs/blob${i}`, join(snapshot, f));
    }
    cpSync(join(src, 'model.safetensors.index.json'), join(snapshot, 'model.safetensors.index.json'));
    const { tensors } = await loadSafetensors(snapshot);
    expect(Object.keys(tensors).length).toBeGreaterThan(0);
    tf.dispose(Object.values(tensors));
  });

  it('names a missing shard and a directory shard in a FileAccessError, leaking nothing', async () => {
    const { rmSync } = await import('node:fs');
    const dir = checkpoint();
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    const before = tf.memory().numTensors;
    const missing = await loadSafetensors(dir).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(FileAccessError);
    expect((missing as FileAccessError).file).toBe(join(dir, 'model-00002-of-00002.safetensors'));
    expect((missing as Error).message).toMatch(/does not exist/);
    mkdirSync(join(dir, 'model-00002-of-00002.safetensors'));
    const isDir = await loadSafetensors(dir).catch((e: unknown) => e);
    expect(isDir).toBeInstanceOf(FileAccessError);
    expect((isDir as Error).message).toMatch(/is a directory/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('reads an index of 60 000 names in linear time', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'lora-wide-'));
    const n = 60_000;
    const tensors: Record<string, { dtype: 'float32'; shape: number[]; values: Float32Array }> = {};
    for (let i = 0; i < n; i++) tensors[`w${i}`] = { dtype: 'float32', shape: [0], values: new Float32Array(0) };
    writeFileSync(join(dir, 'a.safetensors'), await serializeSafetensors(tensors));
    const weightMap = Object.fromEntries(Object.keys(tensors).map((k) => [k, 'a.safetensors']));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    const t0 = cpuMs();
    const loaded = await loadSafetensors(dir);
    expect(cpuMs() - t0).toBeLessThan(15_000);
    expect(Object.keys(loaded.tensors).length).toBe(n);
    tf.dispose(Object.values(loaded.tensors));
  }, 30_000);
});
