/**
 * Benchmark cases shared by the local bench (bench/run.ts) and the GPU-machine bench (bench/gpu.ts).
 * Each case times @lora/linalg and, where it has the operation, ml-matrix, on the same matrix.
 */
import * as tf from '@tensorflow/tfjs-core';
import { Generator } from '@lora/tensor';
import { type Matrix64, eigh, qr, svd, svdLowRank } from '../src/index';

/**
 * The environment for a numpy / torch peer on `threads` BLAS threads. A machine-wide
 * OPENBLAS_CORETYPE (or L2 size) would pin an older kernel: numpy's own choice is the fair peer.
 */
export function blasEnv(threads: number): NodeJS.ProcessEnv {
  const n = String(threads);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    OPENBLAS_NUM_THREADS: n,
    OMP_NUM_THREADS: n,
    MKL_NUM_THREADS: n,
    LORA_PEER_THREADS: n,
  };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  return env;
}

export interface Row {
  name: string;
  ours: number;
  mlMatrix?: number;
  note?: string;
}

/** Median wall time in ms of `fn` over repeats (one warm-up), stopping after ~budget ms. */
export async function time(fn: () => unknown, budgetMs = 3000, maxRuns = 7): Promise<number> {
  await fn();
  const runs: number[] = [];
  const start = performance.now();
  while (runs.length < maxRuns && (runs.length < 3 || performance.now() - start < budgetMs)) {
    const t0 = performance.now();
    await fn();
    runs.push(performance.now() - t0);
  }
  runs.sort((a, b) => a - b);
  return runs[Math.floor(runs.length / 2)] as number;
}

export function gaussian(rows: number, cols: number, seed: number): Matrix64 {
  return { rows, cols, data: new Generator(seed).fillNormal64(new Float64Array(rows * cols)) };
}

type MlMatrix = typeof import('ml-matrix');

export async function cpuRows(ml: MlMatrix | null, only?: RegExp): Promise<Row[]> {
  const rows: Row[] = [];
  const add = async (name: string, ours: () => unknown, peer: (() => unknown) | null) => {
    if (only && !only.test(name)) return;
    const row: Row = { name, ours: await time(ours) };
    if (peer) row.mlMatrix = await time(peer);
    rows.push(row);
    console.error(
      `  ${name}: ${row.ours.toFixed(1)} ms${row.mlMatrix ? `, ml-matrix ${row.mlMatrix.toFixed(1)} ms` : ''}`,
    );
  };
  const toMl = (m: Matrix64) =>
    ml
      ? new ml.Matrix(
          Array.from({ length: m.rows }, (_, i) => Array.from(m.data.subarray(i * m.cols, (i + 1) * m.cols))),
        )
      : null;
  for (const [m, n] of [
    [256, 256],
    [512, 512],
    [1024, 1024],
    [512, 4096],
  ] as const) {
    const a = gaussian(m, n, m + n);
    const am = toMl(a);
    await add(
      `thin SVD ${m}×${n}`,
      () => svd(a),
      am && ml ? () => new ml.SingularValueDecomposition(am, { autoTranspose: true }) : null,
    );
  }
  const tall = gaussian(4096, 64, 7);
  const tallMl = toMl(tall);
  await add('QR 4096×64', () => qr(tall), tallMl && ml ? () => new ml.QrDecomposition(tallMl) : null);
  const g = gaussian(512, 512, 9);
  const sym: Matrix64 = {
    rows: 512,
    cols: 512,
    data: g.data.map((v, i) => (v + (g.data[(i % 512) * 512 + Math.floor(i / 512)] as number)) / 2),
  };
  const symMl = toMl(sym);
  await add(
    'eigh 512×512',
    () => eigh(sym),
    symMl && ml ? () => new ml.EigenvalueDecomposition(symMl, { assumeSymmetric: true }) : null,
  );
  return rows;
}

/** svdLowRank of a 4096² float32 tensor of rank 16 (plus noise) on the active backend. */
export async function lowRankRow(n = 4096, rank = 16): Promise<Row> {
  const g = new Generator(11);
  const a = tf.tidy(() =>
    tf.add(tf.matMul(g.randn([n, rank]), g.randn([rank, n])), tf.mul(g.randn([n, n]), 1e-3)),
  ) as tf.Tensor2D;
  await a.data();
  const run = async () => {
    const r = await svdLowRank(a, { q: rank, niter: 2, seed: 0 });
    await r.S.data();
    tf.dispose([r.U, r.S, r.V]);
  };
  const ms = await time(run, 3000, 9);
  a.dispose();
  return { name: `svdLowRank rank ${rank} of ${n}² (${tf.getBackend()})`, ours: ms };
}
