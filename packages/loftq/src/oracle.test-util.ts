import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs-core';
import { parseSafetensors } from '@lora/tensor';

/** Where the oracle's fixtures live (tools/oracle/loftq_fixtures.py writes them). */
export const FIX = join(import.meta.dirname, '..', '__fixtures__');

/** A fixture file's tensors, by name (the caller disposes them). */
export const readFixture = (file: string): Record<string, tf.Tensor> =>
  parseSafetensors(new Uint8Array(readFileSync(join(FIX, file)))).tensors;

/** The oracle's notes (loftq-notes.json). */
export const notes = () => JSON.parse(readFileSync(join(FIX, 'loftq-notes.json'), 'utf8'));

function* lcg(seed: number): Generator<number> {
  let state = seed >>> 0;
  for (;;) {
    state = (Math.imul(1664525, state) + 1013904223) >>> 0;
    yield state / 2 ** 32;
  }
}

/** The reference's `mat(rows, cols, seed, scale)`: scale·(2u − 1), float64 then float32, row-major. */
export function mat(rows: number, cols: number, seed: number, scale: number): Float32Array {
  const g = lcg(seed);
  return Float32Array.from({ length: rows * cols }, () => scale * (2 * (g.next().value as number) - 1));
}

/** The reference's `gmat(rows, cols, seed, scale)`: scale·(u1+u2+u3+u4 − 2)·√3. */
export function gmat(rows: number, cols: number, seed: number, scale: number): Float32Array {
  const g = lcg(seed);
  return Float32Array.from({ length: rows * cols }, () => {
    const s =
      (g.next().value as number) + (g.next().value as number) + (g.next().value as number) + (g.next().value as number);
    return scale * (s - 2) * Math.sqrt(3);
  });
}

/** The reference's W for LoftQ (§7.4): gmat(64, 128, 71, 0.02). */
export const specWeight = () => ({ data: gmat(64, 128, 71, 0.02), shape: [64, 128] });

/** The oracle's `lapmat`: Laplace entries, −scale·sign(u − ½)·ln(1 − 2|u − ½|) (heavy tails, as trained weights). */
export function lapmat(rows: number, cols: number, seed: number, scale: number): Float32Array {
  const g = lcg(seed);
  return Float32Array.from({ length: rows * cols }, () => {
    const d = (g.next().value as number) - 0.5;
    return -scale * Math.sign(d || 1) * Math.log(Math.max(1 - 2 * Math.abs(d), 2 ** -32));
  });
}
