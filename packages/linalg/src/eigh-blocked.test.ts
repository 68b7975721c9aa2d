import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { type Matrix64, eigh, matrix64 } from '@lora/linalg';
import { describeEachBackend } from '@lora/tensor/testing';
import { orthogonalityError, readFixture } from './fixtures.test-util';
import { largeBattery } from './large-matrices.test-util';

const battery = readFixture('lapack-battery.safetensors');
const symmetric = JSON.parse(battery.metadata.symmetric as string) as string[];

/** The float32 contract: eigenvalues within 1e-5·‖A‖₂ of LAPACK's, A·V = V·Λ and VᵀV = I within 1e-5. */
async function expectFloat32Eigh(a: Matrix64, lapack: Float64Array, label: string) {
  const n = a.rows;
  const t = tf.tensor2d(Float32Array.from(a.data), [n, n]);
  const before = tf.memory().numTensors;
  const r = await eigh(t, { method: 'backend' });
  expect(tf.memory().numTensors, `${label}: only values and vectors are new`).toBe(before + 2);
  const w = Float64Array.from(await r.values.data());
  const V = matrix64(n, n, await r.vectors.data());
  tf.dispose([t, r.values, r.vectors]);
  const scale = Math.max(Math.abs(lapack[0] as number), Math.abs(lapack[n - 1] as number));
  for (let i = 0; i < n; i++) {
    expect(Math.abs((w[i] as number) - (lapack[i] as number)), `${label} λ${i}`).toBeLessThanOrEqual(
      1e-5 * scale + 1e-30,
    );
    if (i > 0) expect(w[i], `${label}: ascending`).toBeGreaterThanOrEqual(w[i - 1] as number);
  }
  if (scale === 0) return;
  expect(orthogonalityError(V), `${label}: VᵀV = I`).toBeLessThan(1e-5);
  // A·vᵢ = λᵢ·vᵢ, the lower triangle mirrored
  let res = 0;
  for (let i = 0; i < n; i++)
    for (let c = 0; c < n; c++) {
      let s = 0;
      for (let j = 0; j < n; j++)
        s += (a.data[i >= j ? i * n + j : j * n + i] as number) * (V.data[j * n + c] as number);
      res = Math.max(res, Math.abs(s - (w[c] as number) * (V.data[i * n + c] as number)));
    }
  expect(res / scale, `${label}: A·V = V·Λ`).toBeLessThan(1e-5);
}

await describeEachBackend('eigh on the backend (float32, blocked tridiagonalisation + divide and conquer)', () => {
  it('meets the float32 contract on the symmetric LAPACK battery and the symmetric parts of the large matrices', async () => {
    for (const name of symmetric)
      await expectFloat32Eigh(battery.get(`${name}.sym`), battery.vector(`${name}.w`), name);
    for (const { name, a, symW } of largeBattery()) {
      if (!symW || a.rows > 260) continue;
      const n = a.rows;
      const sym = matrix64(
        n,
        n,
        Array.from(
          { length: n * n },
          (_, i) => ((a.data[i] as number) + (a.data[(i % n) * n + Math.floor(i / n)] as number)) / 2,
        ),
      );
      await expectFloat32Eigh(sym, symW, `${name} (symmetric part)`);
    }
  });

  it('reads the lower triangle only, reports progress, cancels cleanly', async () => {
    const a = battery.get('sym_gauss_50.sym');
    const junk = Float32Array.from(a.data);
    for (let i = 0; i < 50; i++) for (let j = i + 1; j < 50; j++) junk[i * 50 + j] = 99; // upper triangle ignored
    const t = tf.tensor2d(junk, [50, 50]);
    const stages = new Set<string>();
    const r = await eigh(t, { method: 'backend', onProgress: (p) => stages.add(p.stage) });
    const w = Float64Array.from(await r.values.data());
    const want = battery.vector('sym_gauss_50.w');
    for (let i = 0; i < 50; i++) expect(Math.abs((w[i] as number) - (want[i] as number))).toBeLessThan(1e-5 * 20);
    expect([...stages]).toEqual(['tridiagonalize', 'solve', 'vectors']);
    tf.dispose([r.values, r.vectors]);
    const before = tf.memory().numTensors;
    for (const stage of ['tridiagonalize', 'solve', 'vectors']) {
      const controller = new AbortController();
      const run = eigh(t, {
        method: 'backend',
        signal: controller.signal,
        onProgress: (p) => p.stage === stage && controller.abort(new Error(`stop ${stage}`)),
      });
      await expect(run).rejects.toThrow(`stop ${stage}`);
      expect(tf.memory().numTensors, stage).toBe(before);
    }
    t.dispose();
  });
});
