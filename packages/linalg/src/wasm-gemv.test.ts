import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { describeEachBackend } from '@lora/tensor/testing';
import { gemvModuleBytes, heapGemv } from './wasm-gemv';

it('assembles a valid WebAssembly module', () => {
  expect(WebAssembly.validate(gemvModuleBytes())).toBe(true);
});

await describeEachBackend('matrix–vector products on the wasm heap', (backend) => {
  it('are offered on wasm only', () => {
    expect(heapGemv() !== null).toBe(backend.name === 'wasm');
  });

  it('match float64 products, with odd sizes, a leading dimension and skipped prefixes', async () => {
    const k = heapGemv();
    if (!k) return; // not wasm: checked above
    for (const [rows, cols, ld, r0, c0] of [
      [1, 1, 1, 0, 0],
      [5, 3, 3, 0, 0],
      [13, 11, 16, 2, 3],
      [64, 37, 41, 9, 17],
      [200, 133, 133, 0, 131],
      [33, 200, 203, 32, 0],
    ] as const) {
      const t = tf.randomNormal([rows, ld], 0, 1, 'float32', rows * 7 + cols) as tf.Tensor2D;
      const tv = (await t.data()) as Float32Array;
      const v = Float64Array.from({ length: rows }, (_, i) => Math.sin(i + 1));
      const u = Float64Array.from({ length: cols }, (_, i) => Math.cos(2 * i + 1));
      const before = tf.memory().numTensors;
      const ptr = k.malloc(4 * (2 * rows + 2 * cols));
      // what the outputs' untouched entries must keep
      new Float32Array(k.memory.buffer, ptr, 2 * rows + 2 * cols).fill(99);
      const heap = new Float32Array(k.memory.buffer, ptr, 2 * rows + 2 * cols);
      heap.set(v, 0);
      heap.set(u, rows + cols);
      k.gemvT(k.offsetOf(t), rows, cols, ld, ptr, ptr + 4 * rows, r0);
      k.gemv(k.offsetOf(t), rows, cols, ld, ptr + 4 * (rows + cols), ptr + 4 * (rows + 2 * cols), r0, c0);
      const out = new Float32Array(k.memory.buffer, ptr, 2 * rows + 2 * cols).slice();
      k.free(ptr);
      expect(tf.memory().numTensors).toBe(before);
      for (let c = 0; c < cols; c++) {
        let s = 0;
        let mag = 0;
        for (let r = r0; r < rows; r++) {
          s += (v[r] as number) * (tv[r * ld + c] as number);
          mag += Math.abs((v[r] as number) * (tv[r * ld + c] as number));
        }
        expect(Math.abs((out[rows + c] as number) - s), `Tᵀv ${rows}×${cols} [${c}]`).toBeLessThanOrEqual(
          1e-6 * (mag + 1),
        );
      }
      for (let r = 0; r < rows; r++) {
        const got = out[rows + 2 * cols + r] as number;
        if (r < r0) {
          expect(got, `Tu ${rows}×${cols}: row ${r} before r0 untouched`).toBe(99);
          continue;
        }
        let s = 0;
        let mag = 0;
        for (let c = c0; c < cols; c++) {
          s += (tv[r * ld + c] as number) * (u[c] as number);
          mag += Math.abs((tv[r * ld + c] as number) * (u[c] as number));
        }
        expect(Math.abs(got - s), `Tu ${rows}×${cols} [${r}]`).toBeLessThanOrEqual(1e-6 * (mag + 1));
      }
      t.dispose();
    }
  });
});
