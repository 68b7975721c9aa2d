import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensorsHeader } from '@lora/tensor';
import type { Matrix64 } from './matrix64';

/** Reads a fixture file's tensors as float64 (F64 and F32 only), with their shapes and metadata. */
export function readFixture(file: string): {
  get(name: string): Matrix64;
  vector(name: string): Float64Array;
  metadata: Record<string, string>;
} {
  const bytes = new Uint8Array(readFileSync(join(import.meta.dirname, '..', '__fixtures__', file)));
  const header = readSafetensorsHeader(bytes, file);
  const byName = new Map(header.entries.map((e) => [e.name, e]));
  const vector = (name: string) => {
    const e = byName.get(name);
    if (!e) throw new Error(`${file} has no tensor '${name}'`);
    const buf = bytes.slice(e.begin, e.end).buffer;
    if (e.dtype === 'F64') return new Float64Array(buf);
    if (e.dtype === 'F32') return Float64Array.from(new Float32Array(buf));
    throw new Error(`${name}: dtype ${e.dtype} is not F64 or F32`);
  };
  const get = (name: string): Matrix64 => {
    const e = byName.get(name);
    if (e?.shape.length !== 2) throw new Error(`${file}: '${name}' is not a matrix`);
    return { rows: e.shape[0] as number, cols: e.shape[1] as number, data: vector(name) };
  };
  return { get, vector, metadata: header.metadata };
}

/** ‖a − b‖_F / ‖b‖_F (the absolute Frobenius error when b is zero). */
export function relFro(a: Float64Array, b: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += ((a[i] as number) - (b[i] as number)) ** 2;
    den += (b[i] as number) ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** max |xᵀx − I| over the columns of a row-major matrix (0 for no columns). */
export function orthogonalityError(x: Matrix64): number {
  let worst = 0;
  for (let i = 0; i < x.cols; i++)
    for (let j = i; j < x.cols; j++) {
      let s = 0;
      for (let r = 0; r < x.rows; r++) s += (x.data[r * x.cols + i] as number) * (x.data[r * x.cols + j] as number);
      worst = Math.max(worst, Math.abs(s - (i === j ? 1 : 0)));
    }
  return worst;
}

/** U·diag(S)·Vh for row-major U (m×k), S (k) and Vh (k×n). */
export function reconstruct(U: Matrix64, S: Float64Array, Vh: Matrix64): Float64Array {
  const out = new Float64Array(U.rows * Vh.cols);
  for (let i = 0; i < U.rows; i++)
    for (let p = 0; p < S.length; p++) {
      const f = (U.data[i * U.cols + p] as number) * (S[p] as number);
      if (f === 0) continue;
      for (let j = 0; j < Vh.cols; j++)
        out[i * Vh.cols + j] = (out[i * Vh.cols + j] as number) + f * (Vh.data[p * Vh.cols + j] as number);
    }
  return out;
}
