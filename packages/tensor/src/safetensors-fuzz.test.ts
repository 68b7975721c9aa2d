/**
 * Seeded fuzz of the safetensors reader and the sharded-index loader on mutated files: every input ends
 * in tensors no larger than the file or a SafetensorsError / FileAccessError naming the file, within a
 * time bound, with no tensor leaked. Cases scale with LORA_FUZZ_SCALE (`npm run fuzz` runs 20×).
 */
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, expect, it } from 'vitest';
import { FileAccessError, Generator, SafetensorsError, initBackend, parseSafetensors } from '@lora/tensor';
import { loadSafetensors } from '@lora/tensor/node';

const SCALE = Number(process.env.LORA_FUZZ_SCALE ?? 1);
const SEED = Number(process.env.LORA_FUZZ_SEED ?? 20261128);
/** A case slower than this is a hang for our purposes (generous: CI shares two cores). */
const CASE_MS = 2000;

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
  const text = () => new TextDecoder().decode(b.subarray(8, end));
  /** Replaces the header with `json` (its length prefix rewritten), keeping the data section. */
  const withHeader = (json: string) => {
    const h = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + h.length + (b.length - end));
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    out.set(b.subarray(end), 8 + h.length);
    return out;
  };
  switch (pick(12)) {
    case 7: // a byte-order mark before the header
      return withHeader(`\ufeff${text()}`);
    case 8: // a dim or an offset written as a float
      return withHeader(text().replace(/(\d+)(?=[\],])/, (d) => (pick(2) ? `${d}.0` : `${d}e0`)));
    case 9: // a tensor renamed to a key objects have
      return withHeader(
        text().replace(
          /"[^"]+":\{"dtype"/,
          `"${['__proto__', 'constructor', 'toString', 'hasOwnProperty'][pick(4)]}":{"dtype"`,
        ),
      );
    case 10: // deep nesting inside a field
      return withHeader(text().replace(/"shape":/, `"shape":${'['.repeat(1 + pick(6000))}`));
    case 11: // a name given twice
      return withHeader(text().replace(/^\{("[^"]+":\{[^}]*\})/, '{$1,$1'));
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

it(
  `seed ${SEED}: every mutated file (${4000 * SCALE}) parses or throws a SafetensorsError; none crashes, hangs or over-allocates`,
  () => {
    const g = new Generator(SEED);
    const before = tf.memory().numTensors;
    let parsed = 0;
    let rejected = 0;
    for (let n = 0; n < 4000 * SCALE; n++) {
      const src = seeds[n % seeds.length]!;
      const t0 = performance.now();
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
      expect(performance.now() - t0, `case ${n} took too long`).toBeLessThan(CASE_MS);
    }
    // Both outcomes must actually occur, or the mutations test nothing.
    expect(parsed).toBeGreaterThan(100 * SCALE);
    expect(rejected).toBeGreaterThan(1000 * SCALE);
  },
  60_000 * SCALE,
);

/** One random change to a sharded checkpoint's index. */
function mutateIndex(index: { metadata?: unknown; weight_map: Record<string, unknown> }, g: Generator): string {
  const pick = (n: number) => Math.floor(g.nextFloat24() * n);
  const names = Object.keys(index.weight_map);
  const name = names[pick(names.length)] as string;
  const wm = index.weight_map;
  switch (pick(10)) {
    case 0:
      wm[name] = ['../outside.safetensors', '/etc/passwd', 'missing.safetensors', 'sub', '', 'a/../../b.safetensors'][
        pick(6)
      ];
      break;
    case 1:
      wm[name] = [null, 3, {}, [], true][pick(5)];
      break;
    case 2:
      delete wm[name];
      break;
    case 3:
      wm[`extra.${pick(100)}`] = wm[name];
      break;
    case 4:
      return JSON.stringify({ weight_map: [1, 2] });
    case 5:
      return JSON.stringify(index).slice(0, pick(200));
    case 6:
      return `{"weight_map":${'['.repeat(pick(5000))}`;
    case 7:
      return JSON.stringify(index).replace('"weight_map":{', `"weight_map":{"__proto__":${JSON.stringify(wm[name])},`);
    case 8:
      return `\ufeff${JSON.stringify(index)}`;
    default:
      wm[name] = 'model-00002-of-00002.safetensors';
  }
  return JSON.stringify(index);
}

it(
  `seed ${SEED}: every mutated sharded index (${200 * SCALE}) loads or throws a SafetensorsError / FileAccessError naming a file`,
  async () => {
    const g = new Generator(SEED + 1);
    const src = join(FIXTURES, 'sharded');
    const index = JSON.parse(readFileSync(join(src, 'model.safetensors.index.json'), 'utf8'));
    const dir = mkdtempSync(join(tmpdir(), 'lora-index-fuzz-'));
    cpSync(src, dir, { recursive: true });
    const before = tf.memory().numTensors;
    let loaded = 0;
    let rejected = 0;
    for (let n = 0; n < 200 * SCALE; n++) {
      writeFileSync(join(dir, 'model.safetensors.index.json'), mutateIndex(structuredClone(index), g));
      const t0 = performance.now();
      try {
        const { tensors } = await loadSafetensors(dir);
        loaded++;
        tf.dispose(Object.values(tensors));
      } catch (e) {
        if (!(e instanceof SafetensorsError || e instanceof FileAccessError))
          throw new Error(`index case ${n}: ${String(e)} is not a SafetensorsError or FileAccessError`);
        expect(e.file.startsWith(dir), String(e)).toBe(true);
        rejected++;
      }
      expect(tf.memory().numTensors).toBe(before);
      expect(performance.now() - t0, `index case ${n} took too long`).toBeLessThan(CASE_MS);
    }
    expect(loaded).toBeGreaterThan(5 * SCALE);
    expect(rejected).toBeGreaterThan(50 * SCALE);
  },
  60_000 * SCALE,
);
