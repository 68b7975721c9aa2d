import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  SafetensorsError,
  parseSafetensors,
  readSafetensorsHeader,
  serializeSafetensors,
  initBackend,
} from '@lora/tensor';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
const pyBytes = new Uint8Array(readFileSync(join(FIXTURES, 'python-dtypes.safetensors')));
const expected = JSON.parse(readFileSync(join(FIXTURES, 'python-dtypes.expected.json'), 'utf8')) as {
  metadata: Record<string, string>;
  tensors: Record<string, { torch_dtype: string; shape: number[]; values: (number | string)[] }>;
};
const num = (v: number | string) => (typeof v === 'number' ? v : Number(v));

beforeAll(async () => {
  await initBackend('cpu');
});

describe('parseSafetensors on a file written by Python safetensors', () => {
  it('reads every dtype exactly, with the shapes and metadata Python wrote', async () => {
    const before = tf.memory().numTensors;
    const { tensors, metadata } = parseSafetensors(pyBytes);
    expect(metadata).toEqual(expected.metadata);
    expect(Object.keys(tensors).sort()).toEqual(Object.keys(expected.tensors).sort());
    for (const [name, want] of Object.entries(expected.tensors)) {
      const t = tensors[name]!;
      expect(t.shape, name).toEqual(want.shape);
      const got = Array.from(await t.data());
      const wantValues = want.values.map(num);
      if (want.torch_dtype === 'torch.float64') {
        // tfjs has no float64: values arrive rounded to float32.
        expect(got, name).toEqual(wantValues.map(Math.fround));
      } else if (want.torch_dtype === 'torch.bool') {
        expect(t.dtype).toBe('bool');
        expect(got, name).toEqual(wantValues);
      } else {
        expect(t.dtype).toBe(want.torch_dtype.includes('int') ? 'int32' : 'float32');
        // Object.is: -0 stays -0, NaN equals NaN
        got.forEach((g, i) => {
          expect(Object.is(g, wantValues[i]) || g === wantValues[i], `${name}[${i}]: ${g} vs ${wantValues[i]}`).toBe(
            true,
          );
        });
      }
    }
    tf.dispose(Object.values(tensors));
    expect(tf.memory().numTensors).toBe(before);
  });

  it('reports the header in data order with absolute offsets', () => {
    const header = readSafetensorsHeader(pyBytes);
    expect(header.entries.length).toBe(Object.keys(expected.tensors).length);
    for (let i = 1; i < header.entries.length; i++) expect(header.entries[i]!.begin).toBe(header.entries[i - 1]!.end);
    expect(header.entries.at(-1)!.end).toBe(pyBytes.length);
  });
});

describe('serializeSafetensors', () => {
  it('round-trips float32, int32 and bool tensors bit for bit, with metadata', async () => {
    const a = tf.tensor2d([
      [1.5, -0],
      [Number.NaN, 3e-41],
    ]);
    const b = tf.tensor1d([1, -2, 2147483647], 'int32');
    const c = tf.tensor1d([true, false], 'bool');
    const bytes = await serializeSafetensors({ a, b, c }, { metadata: { format: 'pt' } });
    expect(readSafetensorsHeader(bytes).dataStart % 8).toBe(0); // data aligned for zero-copy views
    const { tensors, metadata } = parseSafetensors(bytes);
    expect(metadata).toEqual({ format: 'pt' });
    expect(new Uint32Array(((await tensors.a!.data()) as Float32Array).buffer)).toEqual(
      new Uint32Array(((await a.data()) as Float32Array).buffer),
    );
    expect(Array.from(await tensors.b!.data())).toEqual([1, -2, 2147483647]);
    expect(Array.from(await tensors.c!.data())).toEqual([1, 0]);
    tf.dispose([a, b, c, ...Object.values(tensors)]);
  });

  it('writes F16, BF16 and I64 as asked and reads them back to the rounded values', async () => {
    const x = tf.tensor1d([1, 1 + 2 ** -11, 1 + 2 ** -8, 70000]);
    const i = tf.tensor1d([5, -7], 'int32');
    const f16 = parseSafetensors(await serializeSafetensors({ x, i }, { dtype: 'F16' }));
    expect(
      readSafetensorsHeader(await serializeSafetensors({ x, i }, { dtype: 'F16' })).entries.map((e) => e.dtype),
    ).toEqual(['I32', 'F16']);
    // 1 + 2^-11 is a tie in f16 and rounds to even (1); 70000 overflows to Inf.
    expect(Array.from(await f16.tensors.x!.data())).toEqual([1, 1, 1 + 2 ** -8, Number.POSITIVE_INFINITY]);
    const bf = parseSafetensors(await serializeSafetensors({ x, i }, { dtype: { x: 'BF16', i: 'I64' } }));
    expect(Array.from(await bf.tensors.x!.data())).toEqual([1, 1, 1, 70144]);
    expect(Array.from(await bf.tensors.i!.data())).toEqual([5, -7]);
    tf.dispose([x, i, ...Object.values(f16.tensors), ...Object.values(bf.tensors)]);
  });

  it('refuses what cannot be written, naming the tensor', async () => {
    const x = tf.tensor1d([1]);
    await expect(serializeSafetensors({ '': x })).rejects.toThrow(/names must not be empty/);
    await expect(serializeSafetensors({ x }, { dtype: { x: 'I64' } })).rejects.toThrow(
      /tensor 'x' dtype: a float32 tensor cannot be written as I64/,
    );
    await expect(serializeSafetensors({ x }, { metadata: { n: 3 as unknown as string } })).rejects.toThrow(
      /metadata values must be strings/,
    );
    await expect(
      serializeSafetensors({ x: { dtype: 'float32', shape: [2], values: new Float32Array(3) } }),
    ).rejects.toThrow(/has 2 elements but 3 values/);
    x.dispose();
  });

  it('produces the bytes that Python verified (tools/oracle/check_js_written.py)', async () => {
    // js-written.safetensors was made by this writer and read back by Python's safetensors;
    // the writer must keep producing exactly those bytes.
    // LORA_UPDATE_FIXTURES=1 rewrites it; then run check_js_written.py again.
    const bytes = await serializeSafetensors(jsWrittenTensors(), {
      metadata: { format: 'pt', writer: '@lora/tensor' },
      dtype: { half: 'F16', brain: 'BF16', long: 'I64' },
    });
    const path = join(FIXTURES, 'js-written.safetensors');
    if (process.env.LORA_UPDATE_FIXTURES === '1') writeFileSync(path, bytes);
    expect(Buffer.from(bytes).equals(readFileSync(path))).toBe(true);
  });
});

/** The tensors of js-written.safetensors; check_js_written.py holds the same values. */
function jsWrittenTensors() {
  return {
    weight: { dtype: 'float32' as const, shape: [2, 3], values: new Float32Array([0.5, -1.25, 3.0e-8, 1e20, -0, 7]) },
    half: { dtype: 'float32' as const, shape: [4], values: new Float32Array([1, -2.5, 65504, 0.1]) },
    brain: { dtype: 'float32' as const, shape: [3], values: new Float32Array([1, -2.5, 0.1]) },
    ints: { dtype: 'int32' as const, shape: [3], values: new Int32Array([1, -2, 2147483647]) },
    long: { dtype: 'int32' as const, shape: [2], values: new Int32Array([-2147483648, 42]) },
    flags: { dtype: 'bool' as const, shape: [2], values: new Uint8Array([1, 0]) },
  };
}

describe('malformed files', () => {
  const valid = pyBytes;
  const withHeader = (json: string, data = new Uint8Array(0)) => {
    const h = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + h.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    out.set(data, 8 + h.length);
    return out;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['a file shorter than 8 bytes', valid.subarray(0, 5), /header_length: file is 5 bytes/],
    ['a header length past the end', valid.subarray(0, 100), /header_length: header length \d+ runs past the end/],
    [
      'a header length over the limit',
      (() => {
        const b = valid.slice();
        new DataView(b.buffer).setBigUint64(0, 2n ** 40n, true);
        return b;
      })(),
      /exceeds the 100000000-byte limit/,
    ],
    ['invalid JSON', withHeader('{"a": '), /header: header is not valid JSON/],
    ['a JSON array', withHeader('[1,2]'), /header must be a JSON object/],
    [
      'an unknown dtype',
      withHeader('{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)),
      /tensor 'a' dtype: unknown dtype "F7"/,
    ],
    [
      'an unreadable dtype',
      withHeader('{"a":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}}', new Uint8Array(4)),
      /tensor 'a' dtype: dtype U32 cannot be read/,
    ],
    [
      'a negative dimension',
      withHeader('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', new Uint8Array(4)),
      /tensor 'a' shape: shape \[-1\]/,
    ],
    [
      'offsets out of bounds',
      withHeader('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', new Uint8Array(4)),
      /tensor 'a' data_offsets: .* run past the 4-byte data section/,
    ],
    [
      'shape and bytes that disagree',
      withHeader('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', new Uint8Array(8)),
      /tensor 'a' shape: shape \[3\] × F32 \(4 bytes\) needs 12 bytes/,
    ],
    [
      'overlapping tensors',
      withHeader(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        new Uint8Array(8),
      ),
      /tensor 'b' data_offsets: .* overlaps/,
    ],
    [
      'a gap between tensors',
      withHeader(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
        new Uint8Array(12),
      ),
      /tensor 'b' data_offsets: .* leaves a gap of 4 bytes/,
    ],
    [
      'trailing bytes',
      withHeader('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', new Uint8Array(9)),
      /data: tensors cover 4 bytes of a 9-byte data section/,
    ],
    [
      'a duplicate name',
      withHeader(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}',
        new Uint8Array(2),
      ),
      /tensor 'a' name: name 'a' appears more than once/,
    ],
    [
      'an empty name',
      withHeader('{"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)),
      /name: a tensor has an empty name/,
    ],
    ['non-string metadata', withHeader('{"__metadata__":{"n":1}}'), /__metadata__: value of 'n' is 1/],
    [
      'an I64 beyond int32',
      withHeader('{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}', new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0])),
      /tensor 'a' data: I64 value 4294967296/,
    ],
    [
      'invalid UTF-8',
      withHeader('{"\udc80":1}'.replace('\udc80', 'x')).map((b, i) => (i === 10 ? 0xff : b)),
      /header is not valid UTF-8/,
    ],
  ];
  for (const [what, bytes, message] of cases) {
    it(`rejects ${what} with a SafetensorsError naming the file and field`, () => {
      const before = tf.memory().numTensors;
      let error: unknown;
      try {
        parseSafetensors(bytes, { file: 'bad.safetensors' });
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(SafetensorsError);
      expect((error as Error).message).toMatch(/^bad\.safetensors:/);
      expect((error as Error).message).toMatch(message);
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});
