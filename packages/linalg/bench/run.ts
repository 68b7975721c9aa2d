/**
 * `npm run bench -w @lora/linalg`: @lora/linalg against ml-matrix and numpy/LAPACK (single thread)
 * in the same run, plus svdLowRank on the best local backend against torch (CPU) when present.
 * Prints a markdown table for BENCHMARKS.md. `BENCH_SUITE=large`: the large suite instead (bench/large.ts).
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { initBackend } from '@lora/tensor';
import { type Row, blasEnv, cpuRows, lowRankRow } from './cases';

if (process.env.BENCH_SUITE === 'large') {
  // BENCH_SUITE=large: SVDs at the size of real models (bench/large.ts)
  const { largeBench } = await import('./large');
  await largeBench({
    dir: join(import.meta.dirname, '..', '.bench', 'large'),
    peersScript: join(import.meta.dirname, '..', 'bench', 'peers_large.py'),
    init: () => initBackend((process.env.LORA_BACKEND ?? 'wasm') as 'wasm'),
  });
  process.exit(0);
}

const only = process.env.BENCH_ONLY ? new RegExp(process.env.BENCH_ONLY) : undefined;
let ml: typeof import('ml-matrix') | null = null;
try {
  ml = await import('ml-matrix');
} catch {
  console.error('ml-matrix not installed: its column stays empty');
}
console.error('timing @lora/linalg and ml-matrix (float64, one thread)…');
const rows: Row[] = await cpuRows(ml, only);
const info = await initBackend((process.env.LORA_BACKEND ?? 'auto') as 'auto');
if (!only || only.test('svdLowRank')) rows.push(await lowRankRow());

let peers: Record<string, number | string> = {};
const python = process.env.PYTHON ?? 'python3';
console.error(`timing numpy/LAPACK (${python}, OPENBLAS_NUM_THREADS=1)…`);
const res = spawnSync(python, [join(import.meta.dirname, '..', 'bench', 'peers.py')], {
  env: blasEnv(1),
  encoding: 'utf8',
});
if (res.status === 0) peers = JSON.parse(res.stdout.trim().split('\n').at(-1) as string);
else console.error(`no numpy peer: ${res.error?.message ?? res.stderr.trim().split('\n').at(-1)}`);

const fmt = (v: number | string | undefined) => (typeof v === 'number' ? v.toFixed(1) : '–');
console.log(
  `\n${new Date().toISOString().slice(0, 10)}, Node ${process.version}, backend ${info.name} (${info.adapter}); numpy ${peers.numpy ?? '–'}${peers.torch ? `, torch ${peers.torch}` : ''}\n`,
);
console.log('| case | @lora/linalg ms | ml-matrix ms | numpy/LAPACK 1 thread ms | torch ms | ours / LAPACK |');
console.log('| --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  const lapack = peers[r.name];
  const torch = r.name.startsWith('svdLowRank') ? peers['svdLowRank rank 16 of 4096² torch cpu'] : undefined;
  const ratio =
    typeof lapack === 'number'
      ? (r.ours / lapack).toFixed(1) + '×'
      : typeof torch === 'number'
        ? `${(r.ours / torch).toFixed(1)}× torch`
        : '–';
  console.log(`| ${r.name} | ${fmt(r.ours)} | ${fmt(r.mlMatrix)} | ${fmt(lapack)} | ${fmt(torch)} | ${ratio} |`);
}
