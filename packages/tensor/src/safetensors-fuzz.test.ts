import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { Generator, SafetensorsError, parseSafetensors, initBackend } from '@lora/tensor';

const FIXTURES = join(import.meta.dirname, '..', '__fixtures__');
const seeds = ['python-dtypes.safetensors', 'js-written.safetensors', 'sharded/model-00001-of-00002.safetensors'].map(
  (f) => new Uint8Array(readFileSync(join(FIXTURES, f))),
);

beforeAll(async () => {
  await initBackend('cpu');
});

/** Where the header ends, as the prefix claims, clamped to the buffer (mutations may have broken it). */
function headerEnd(bytes: Uint8Array): number {
  if (bytes.length < 9) return bytes.length;
  const claimed = 8 + Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return Math.min(claimed, bytes.length);
}

/** One random mutation: byte flips, truncation, length-prefix edits, or edits to the header's digits and quotes. */
function mutate(src: Uint8Array, g: Generator): Uint8Array {
  const pick = (n: number) => Math.floor(g.nextFloat24() * n);
  let b = src.slice();
  const end = headerEnd(src);
  switch (pick(7)) {
    case 0: // flip random bytes anywhere
      for (let k = 1 + pick(4); k > 0; k--) {
        const i = pick(b.length);
        b[i] = (b[i] as number) ^ (1 << pick(8));
      }
      break;
    case 1: // truncate
      b = b.slice(0, pick(b.length));
      break;
    case 2: // rewrite the header length
      new DataView(b.buffer).setBigUint64(0, BigInt(g.nextUint32()) * BigInt(pick(3)) + BigInt(pick(end + 16)), true);
      break;
    case 3: {
      // change a digit inside the header (shapes, offsets)
      const digits = [];
      for (let i = 8; i < end; i++) if (b[i]! >= 48 && b[i]! <= 57) digits.push(i);
      if (digits.length) b[digits[pick(digits.length)]!] = 48 + pick(10);
      break;
    }
    case 4: {
      // replace a header byte with JSON punctuation
      const chars = '{}[]",:-0 e';
      b[8 + pick(end - 8)] = chars.charCodeAt(pick(chars.length));
      break;
    }
    case 5: {
      // append or remove data bytes
      const extra = pick(16);
      const out = new Uint8Array(Math.max(end, b.length + extra - pick(16)));
      out.set(b.subarray(0, Math.min(b.length, out.length)));
      b = out;
      break;
    }
    default: {
      // swap two header bytes
      const i = 8 + pick(end - 8);
      const j = 8 + pick(end - 8);
      [b[i], b[j]] = [b[j]!, b[i]!];
    }
  }
  return b;
}

it('every mutated file parses or throws a SafetensorsError; none crashes, hangs or over-allocates', () => {
  const g = new Generator(20261128);
  const before = tf.memory().numTensors;
  let parsed = 0;
  let rejected = 0;
  for (let n = 0; n < 4000; n++) {
    const src = seeds[n % seeds.length]!;
    // stack one to three mutations
    let bytes = mutate(src, g);
    for (let k = Math.floor(g.nextFloat24() * 3); k > 0 && bytes.length >= 8; k--) bytes = mutate(bytes, g);
    try {
      const { tensors } = parseSafetensors(bytes, { file: `case-${n}` });
      parsed++;
      // What a file may allocate is bounded by the file: every element takes at least one byte on disk.
      const elements = Object.values(tensors).reduce((s, t) => s + t.size, 0);
      expect(elements).toBeLessThanOrEqual(bytes.length);
      tf.dispose(Object.values(tensors));
    } catch (e) {
      if (!(e instanceof SafetensorsError)) throw new Error(`case ${n}: ${String(e)} is not a SafetensorsError`);
      expect(e.file).toBe(`case-${n}`);
      rejected++;
    }
    expect(tf.memory().numTensors).toBe(before);
  }
  // Both outcomes must actually occur, or the mutations test nothing.
  expect(parsed).toBeGreaterThan(100);
  expect(rejected).toBeGreaterThan(1000);
});
