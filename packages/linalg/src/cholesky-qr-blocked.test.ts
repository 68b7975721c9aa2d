import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { matrix64 } from '@lora/linalg';
import { Generator } from '@lora/tensor';
import { describeEachBackend } from '@lora/tensor/testing';
import { choleskyQr2Blocked } from './cholesky-qr-blocked';
import { orthogonalityError, relFro } from './fixtures.test-util';
import { withSpectrum } from './large-matrices.test-util';

await describeEachBackend('CholeskyQR2 with a blocked Cholesky', () => {
  it('factors a tall matrix with blocks that do not divide n: Q orthonormal, R upper, Q·R = X', async () => {
    const m = 300;
    const n = 150;
    const x = Float32Array.from(new Generator(3).fillNormal(new Float32Array(m * n)));
    const t = tf.tensor2d(x, [m, n]);
    const before = tf.memory().numTensors;
    const r = await choleskyQr2Blocked(t, { block: 64 });
    expect(r).not.toBeNull();
    const { q, r: rr } = r as NonNullable<typeof r>;
    expect(tf.memory().numTensors).toBe(before + 2);
    const Q = matrix64(m, n, await q.data());
    const R = matrix64(n, n, await rr.data());
    const qr = tf.matMul(q, rr);
    const prod = await qr.data();
    tf.dispose([q, rr, qr, t]);
    expect(orthogonalityError(Q)).toBeLessThan(1e-5);
    for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(R.data[i * n + j]).toBe(0);
    expect(relFro(Float64Array.from(prod), Float64Array.from(x))).toBeLessThan(1e-5);
  });

  it('refuses (null, nothing left behind) where X is too ill-conditioned for float32, and a wide X', async () => {
    const graded = withSpectrum(
      200,
      60,
      Array.from({ length: 60 }, (_, i) => 10 ** (-7 * (i / 59))),
    );
    const t = tf.tensor2d(Float32Array.from(graded.data), [200, 60]);
    const wide = tf.zeros([10, 20]) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    expect(await choleskyQr2Blocked(t, { block: 32 })).toBeNull();
    expect(await choleskyQr2Blocked(wide)).toBeNull();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([t, wide]);
  });
});
