/**
 * The float32 SVD of large tensors on webgpu by blocked one-sided Jacobi: the columns of A (with
 * V = I stacked under them) are rotated in blocks of b until every pair is orthogonal; then
 * σₖ = ‖aₖ‖/‖vₖ‖, uₖ = aₖ/‖aₖ‖ and vₖ/‖vₖ‖ the right vectors. Each step of a sweep pairs all blocks at
 * once (round-robin order) and costs three WGSL programs, whatever the size: the pairs' 2b×2b Gram
 * matrices in partial sums over row chunks (enough workgroups to fill the device), their
 * diagonalisation by two-sided cyclic Jacobi in workgroup memory (one workgroup a pair, the rotations
 * accumulated into J), and [Aᵢ Aⱼ; Vᵢ Vⱼ] ← [Aᵢ Aⱼ; Vᵢ Vⱼ]·J in place. One read-back a sweep (the
 * largest cosine between two columns met in it, and the columns' norms, by which the next sweep
 * orders them). The per-op host overhead of the Householder path (tens of thousands of small tfjs
 * ops) is gone: a Gaussian 1024² SVD takes 11 sweeps and about 2,200 programs with the default
 * 16-column blocks (10 sweeps, 1,020 programs with 32-column blocks; H200 figures in BENCHMARKS.md).
 * With `fused`, a step is one program instead (a workgroup a pair does all three, reading and
 * rotating its columns in global memory): a third of the programs, for sizes where a program's fixed
 * cost outweighs the Gram matrix's and the rotation's parallelism.
 *
 * This package does not import the webgpu backend: the program interface is @lora/tensor's
 * `WebGPUProgramLike` (types only), as in @lora/eva's small-factor.ts.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { WebGPUBackendLike, WebGPUProgramLike, WebGPUUniform } from '@lora/tensor';
import { choleskyQr2Blocked } from './cholesky-qr-blocked';
import { type ReflectorBlock, joinBlocks } from './block-reflectors';
import { LinalgError } from './errors';
import { type LongRunOptions, checkpoints } from './long-run';
import { Held, applyAll, qrBlocked } from './svd-blocked';

type WebGPUProgram = WebGPUProgramLike;
type Uniform = WebGPUUniform;
type WebGPUBackend = WebGPUBackendLike;

/** Options of the Jacobi SVD. */
export interface JacobiSvdOptions extends LongRunOptions {
  /**
   * Columns a block (16 or 32; default 16). On the H200, 16-column blocks were faster at both sizes
   * measured before the dispatch cache (1024²: 365 ms against 406; 4096²: 2.51 s against 2.87): twice the block pairs a step keep
   * more of the GPU busy, which outweighs twice the steps. 32 needs 26 KiB of workgroup memory.
   */
  block?: number;
  /** Cyclic Jacobi sweeps (at most) on each pair's Gram matrix at each step. Default 2. */
  innerSweeps?: number;
  /**
   * Whether a pair's inner sweeps stop as soon as its Gram matrix is diagonal to tolerance (one
   * barrier after each sweep tests what the next sweep would), rather than after a sweep that rotated
   * nothing (a whole sweep, 2·(2b − 1) barriers, of no rotation). The same rotations either way, so the
   * same result and outer sweeps; fewer inner sweeps once the pairs converge quadratically (the last
   * few outer sweeps). Default false: on the H200 (2026-12-03, torch CUDA in the same call) the old
   * rule with `checkBelow: 0` took 106–109 ms at 1024² and 371 ms at 2048², this option with
   * `checkBelow: 0.01` 117–135 ms and 428 ms (the extra barrier a sweep costs more than it saves).
   */
  innerExit?: boolean;
  /**
   * A pair whose largest cosine at its step is above this takes one inner sweep only, the others up
   * to `innerSweeps` (adaptive inner sweeps: far from orthogonal, the other pairs' rotations undo
   * most of what a second sweep would do). Default 2 (never: every pair up to `innerSweeps`). On the
   * battery it cost outer sweeps where more inner sweeps help (clustered_256: 23 with innerSweeps 3
   * and 0.1, as with innerSweeps 1, against 17 with 2), so it is not the default.
   * @example svdJacobi(a, { innerSweeps: 3, singleSweepAbove: 1e-3 })
   */
  singleSweepAbove?: number;
  /**
   * Whether each step is one WGSL program instead of three: one workgroup a pair computes its Gram
   * matrix from the columns, diagonalises it and rotates its columns (A's and V's rows) in place, with
   * no partial Gram matrices or J in global memory and no program boundary between them. Fewer,
   * longer programs with less parallelism in the Gram matrix and the rotation (a workgroup a pair);
   * meant for sizes where per-program cost dominates (512² … 2048²). The same algorithm, so the same
   * sweeps give or take one (its Gram matrices are summed in another order): Gaussian 1024² 10 sweeps,
   * 758 programs against 2,025 (H200, 2026-12-03: 150–169 ms against 106–135 ms, so not the default). Default false.
   * @example svdJacobi(a, { fused: true, innerSweeps: 1 })
   */
  fused?: boolean;
  /**
   * Whether each round of a pair's inner sweep is one barrier instead of two: every thread computes
   * the (at most two) rotations it applies itself, from G as the round found it, and writes its 2×2
   * block of the rotated G into a second copy of G, so that no barrier is needed between computing
   * the rotations and applying them. The same rotations; block 16 only. Default false.
   * @example svdJacobi(a, { fused: true, mergedRounds: true })
   */
  mergedRounds?: boolean;
  /** Whether each J is made orthogonal to first order before it is applied. Default true. */
  polish?: boolean;
  /** Whether U's columns for zero singular values are completed to an orthonormal basis. Default true. */
  complete?: boolean;
  /** Whether each sweep takes the columns in decreasing norm. Default true. */
  sortColumns?: boolean;
  /**
   * After a sweep whose largest cosine (between two columns, as it met them) is at most this, the
   * columns' cosines are measured all at once, from one Gram matrix AᵀA (a matrix product, no
   * rotation), and the sweeps stop if every one is at the stopping level (√m·2⁻²⁴). Jacobi converges
   * quadratically, so such a sweep usually leaves the columns orthogonal to rounding, and the sweep
   * the default rule waits for (to see every cosine at that level) only confirms it: this saves that
   * sweep for a matrix product, with the same guarantee: on the battery and Gaussian 512² one sweep
   * fewer in every case but one (where the sweep after 0.1 met them all orthogonal), at most two
   * checks. The product costs less than one sweep's Gram matrices (m·N² against 2·m·N² multiply–adds,
   * in one program). Default 0 (off): on the H200 it did not pay (see `innerExit`).
   * @example svdJacobi(a, { checkBelow: 1e-2 })
   */
  checkBelow?: number;
  /** Sweeps before it stops unconverged. Default 30. */
  maxSweeps?: number;
  /**
   * From this aspect ratio on (m ≥ ratio·n for the tall orientation), a QR comes first and R (n×n) is
   * decomposed, so that the sweeps work on n rows instead of m. Default 2. Infinity: never.
   */
  qrFirstRatio?: number;
  /**
   * How that QR is made: `'cholesky'` (default): CholeskyQR2 with a blocked Cholesky, everything of
   * size m·n on the backend (three Gram products, two blocked solves, n/256 read-backs of 256² a
   * Cholesky), then U = Q·U_R as one product. It holds in float32 for κ up to about 10³; past that (a
   * Cholesky fails, or QᵀQ strays from I by more than 10⁻⁵) the sweeps run on the tall matrix itself,
   * as with no QR. `'householder'`: blocked Householder, its panels factored on the host, one
   * read-back each (on the H200 it cost more than the sweeps' extra rows: BENCHMARKS.md).
   */
  qrMethod?: 'householder' | 'cholesky';
}

/** Whether the active backend runs {@link svdJacobi}. */
export function jacobiOnBackend(): boolean {
  return tf.getBackend() === 'webgpu';
}

/** Gram rows a tile (Gram program) and the workgroups a program aims for (partial sums over rows). */
const GRAM_TILE = 32;
const TARGET_WORKGROUPS = 1024;
const JACOBI_WG = 256;
/**
 * Cyclic Jacobi sweeps (at most) on a pair's Gram matrix at each step; a pair stops as soon as a
 * sweep rotates nothing. Clustered spectra want more (clustered_256: 23 outer sweeps with one, 15 with
 * two, 12 with four); Gaussian matrices hardly (512²: 10 outer sweeps with one or two), and each inner
 * sweep is 2·(2b − 1) barriers of a workgroup that has the GPU nearly to itself.
 */
const INNER_SWEEPS = 2;
/** The largest cosine of a sweep after which all cosines are checked at once (option checkBelow; 0: never). */
const CHECK_BELOW = 0;
/** Columns whose norm is below this fraction of the largest are treated as zero (their Gram entries underflow). */
const NEGLIGIBLE = 2 ** -60;

/** Workgroup memory the Jacobi program takes at b = 32 (G packed, J, the rotations and their pairs, a reduction). */
const JACOBI_STORAGE_32 = (2080 + 4096 + 64 + 64 + JACOBI_WG + 2) * 4;

function storageLimit(backend: WebGPUBackend): number {
  return backend.device?.limits?.maxComputeWorkgroupStorageSize ?? 16_384;
}

/**
 * WGSL shared by the programs: the round-robin pairing of the `nb` blocks (step r of nb − 1 pairs
 * block nb − 1 with r, and r + p with r − p, mod nb − 1) and the column of A for the pair's
 * column a (the first b from block x, the next b from block y).
 */
function pairing(b: number): string {
  return `
      const B = ${b};
      const Q = ${2 * b};
      fn pairBlocks(r : i32, p : i32) -> vec2<i32> {
        let n1 = uniforms.nb - 1;
        if (p == 0) { return vec2<i32>(n1, r); }
        return vec2<i32>((r + p) % n1, (r - p + n1) % n1);
      }
      fn colOf(a : i32, blocks : vec2<i32>) -> i32 {
        return select(blocks.y * B + a - B, blocks.x * B + a, a < B);
      }`;
}

const UNIFORMS =
  'nb : i32, step : i32, rows : i32, cols : i32, chunkRows : i32, chunks : i32, tol : f32, pairs : i32, inner : i32, polish : i32, stats : i32, allRows : i32, split : f32, innerExit : i32,';

/**
 * Partial Gram matrices: workgroup (p, c) sums Σ x·xᵀ over its chunk of rows of the pair's 2b
 * columns, each thread a 4×4 block of the 2b×2b result; result[(p·chunks + c)·Q² …].
 */
function gramProgram(b: number, pairs: number, chunks: number): WebGPUProgram {
  const q = 2 * b;
  const t4 = q / 4;
  const wg = t4 * t4;
  return {
    outputShape: [pairs * chunks * q * q],
    shaderKey: `LoraJacobiGram_${b}`,
    dispatchLayout: { x: [0] },
    dispatch: [pairs, chunks, 1],
    variableNames: ['X'],
    workgroupSize: [wg, 1, 1],
    uniforms: UNIFORMS,
    getUserCode: () => `
      ${pairing(b)}
      const TR = ${GRAM_TILE};
      const T4 = ${t4};
      var<workgroup> tile : array<f32, ${GRAM_TILE * q}>;
      fn main(index : i32) {
        let lid = i32(localId.x);
        let p = i32(workgroupId.x);
        let c = i32(workgroupId.y);
        let blocks = pairBlocks(uniforms.step, p);
        let r0 = c * uniforms.chunkRows;
        let r1 = min(r0 + uniforms.chunkRows, uniforms.rows);
        let ta = (lid / T4) * 4;
        let tc = (lid % T4) * 4;
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        for (var it = 0; it < uniforms.chunkRows / TR; it = it + 1) {
          let t0 = r0 + it * TR;
          for (var e = lid; e < TR * Q; e = e + ${wg}) {
            let r = t0 + e / Q;
            var v = 0.0;
            if (r < r1) { v = X[r * uniforms.cols + colOf(e % Q, blocks)]; }
            tile[e] = v;
          }
          workgroupBarrier();
          for (var r = 0; r < TR; r = r + 1) {
            let o = r * Q;
            let x = vec4<f32>(tile[o + ta], tile[o + ta + 1], tile[o + ta + 2], tile[o + ta + 3]);
            let y = vec4<f32>(tile[o + tc], tile[o + tc + 1], tile[o + tc + 2], tile[o + tc + 3]);
            acc0 = acc0 + x.x * y;
            acc1 = acc1 + x.y * y;
            acc2 = acc2 + x.z * y;
            acc3 = acc3 + x.w * y;
          }
          workgroupBarrier();
        }
        let o = (p * uniforms.chunks + c) * Q * Q + ta * Q + tc;
        for (var j = 0; j < 4; j = j + 1) {
          result[o + j] = acc0[j];
          result[o + Q + j] = acc1[j];
          result[o + 2 * Q + j] = acc2[j];
          result[o + 3 * Q + j] = acc3[j];
        }
      }`,
  };
}

/**
 * The workgroup memory and helpers of the per-pair Jacobi (both {@link jacobiProgram} and
 * {@link fusedProgram}): G packed as its upper triangle (so that G and J fit in 32 KiB of workgroup
 * memory at Q = 64), J, a round's rotations and their index pairs, a reduction.
 */
function pairDecls(b: number, wg: number, merged: boolean): string {
  const q = 2 * b;
  return `
      const H = ${b};
      const GP = ${(q * (q + 1)) / 2};
      var<workgroup> g : array<f32, ${merged ? 'GP * 2' : 'GP'}>;
      var<workgroup> jm : array<f32, ${q * q}>;
      var<workgroup> cs : array<vec2<f32>, ${b}>;
      var<workgroup> pr : array<vec2<i32>, ${b}>;
      var<workgroup> red : array<f32, ${wg}>;
      var<workgroup> rotated : u32;
      var<workgroup> offv : f32;
      fn pairOf(r : i32, p : i32) -> vec2<i32> {
        let n1 = Q - 1;
        if (p == 0) { return vec2<i32>(n1, r); }
        return vec2<i32>((r + p) % n1, (r - p + n1) % n1);
      }
      // (i, j) of the symmetric G in its packed upper triangle
      fn pk(i : i32, j : i32) -> i32 {
        let a = min(i, j);
        return a * (2 * Q - a + 1) / 2 + max(i, j) - a;
      }
      // the rotation (c, s) of columns ij.x, ij.y of G (at g[base …]) that zeroes their entry, and 1 when
      // it rotates; (1, 0, 0) below tol
      fn rotationOf(ij : vec2<i32>, base : i32, tol : f32) -> vec3<f32> {
        let a = g[base + pk(ij.x, ij.x)];
        let bb = g[base + pk(ij.y, ij.y)];
        let x = g[base + pk(ij.x, ij.y)];
        var c = 1.0;
        var s = 0.0;
        var turned = 0.0;
        if (abs(x) > tol * sqrt(a) * sqrt(bb)) {
          turned = 1.0;
          let zeta = (bb - a) / (2.0 * x);
          var t = 0.5 / zeta;
          if (abs(zeta) < 1e15) {
            t = select(-1.0, 1.0, zeta >= 0.0) / (abs(zeta) + sqrt(1.0 + zeta * zeta));
          }
          c = 1.0 / sqrt(1.0 + t * t);
          s = c * t;
          // sqrt and division may be a few ulp off, always the same way: unless c² + s² is brought
          // back to 1 (one Newton step), the columns' norms drift by that much at every rotation
          let f = 1.5 - 0.5 * (c * c + s * s);
          c = c * f;
          s = s * f;
        }
        return vec3<f32>(c, s, turned);
      }`;
}

/**
 * WGSL from G in `g` (and J = I in `jm`) to the pair's J in `jm`: the largest cosine written to
 * result[stats + step·pairs + p]; unless that is below tol, cyclic Jacobi sweeps on G (at most
 * `inner`, one when the cosine is above `split`), their count written to
 * result[stats + (steps + step)·pairs + p] (the benchmark's serial-work figure); then J's columns
 * normalised and, with `polish`, its rounding taken out to first order. Returns early (J = I not
 * written) when the pair is already orthogonal.
 */
function pairJacobi(b: number, wg: number, merged: boolean): string {
  const q = 2 * b;
  return `
        var mx = 0.0;
        for (var e = lid; e < Q * Q; e = e + ${wg}) {
          let i = e / Q;
          let j = e % Q;
          if (j > i) {
            let d = sqrt(g[pk(i, i)]) * sqrt(g[pk(j, j)]);
            if (d > 0.0) { mx = max(mx, abs(g[pk(i, j)]) / d); }
          }
        }
        red[lid] = mx;
        workgroupBarrier();
        for (var s = ${wg / 2}; s > 0; s = s >> 1u) {
          if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
          workgroupBarrier();
        }
        let statOff = uniforms.stats + uniforms.step * uniforms.pairs + p;
        let statSweeps = statOff + (uniforms.nb - 1) * uniforms.pairs;
        if (lid == 0) {
          offv = red[0];
          result[statOff] = red[0];
          result[statSweeps] = 0.0;
        }
        let off = workgroupUniformLoad(&offv);
        if (off <= tol) { return; }
        // far from orthogonal, the other pairs' rotations undo most of what a second sweep would do here
        let inner = select(uniforms.inner, 1, off > uniforms.split);
        var swept = 0;
        // where G is in g: it alternates between two copies when the rounds are merged
        var gb = 0;
        for (var sweep = 0; sweep < inner; sweep = sweep + 1) {
          if (lid == 0) { rotated = 0u; }
          workgroupBarrier();
${
  merged
    ? `          for (var r = 0; r < Q - 1; r = r + 1) {
            // this thread's 2×2 block of G is on the rows of pair p1 and the columns of pair p2, and its
            // entries of J in pair p2's columns: it computes those two rotations itself, from the G of
            // the round's start (at gb), and writes the block's new values into the other copy
            let p1 = lid / H;
            let p2 = lid % H;
            let a = pairOf(r, p1);
            let d = pairOf(r, p2);
            let r1 = rotationOf(a, gb, tol);
            let r2 = rotationOf(d, gb, tol);
            if (r2.y != 0.0) { rotated = 1u; }
            let nb2 = GP - gb;
            if (p1 <= p2) {
              let ii = pk(a.x, d.x);
              let ij = pk(a.x, d.y);
              let ji = pk(a.y, d.x);
              let jj = pk(a.y, d.y);
              let b00 = g[gb + ii];
              let b01 = g[gb + ij];
              let b10 = g[gb + ji];
              let b11 = g[gb + jj];
              let c00 = r2.x * b00 - r2.y * b01;
              let c01 = r2.y * b00 + r2.x * b01;
              let c10 = r2.x * b10 - r2.y * b11;
              let c11 = r2.y * b10 + r2.x * b11;
              g[nb2 + ii] = r1.x * c00 - r1.y * c10;
              g[nb2 + ij] = r1.x * c01 - r1.y * c11;
              g[nb2 + jj] = r1.y * c01 + r1.x * c11;
              if (p1 != p2) { g[nb2 + ji] = r1.y * c00 + r1.x * c10; }
            }
            if (r2.y != 0.0) {
              for (var k = lid / H; k < Q; k = k + ${wg} / H) {
                let vi = jm[k * Q + d.x];
                let vj = jm[k * Q + d.y];
                jm[k * Q + d.x] = r2.x * vi - r2.y * vj;
                jm[k * Q + d.y] = r2.y * vi + r2.x * vj;
              }
            }
            workgroupBarrier();
            gb = nb2;
          }
`
    : `          for (var r = 0; r < Q - 1; r = r + 1) {
            if (lid < H) {
              let ij = pairOf(r, lid);
              let rot = rotationOf(ij, 0, tol);
              if (rot.z != 0.0) { rotated = 1u; }
              cs[lid] = rot.xy;
              pr[lid] = ij;
            }
            workgroupBarrier();
            // the 2×2 block of G on the rows of pair p1 and the columns of pair p2 ← R₁ᵀ·block·R₂
            for (var e = lid; e < H * H; e = e + ${wg}) {
              let p1 = e / H;
              let p2 = e % H;
              let r1 = cs[p1];
              let r2 = cs[p2];
              if (p1 <= p2 && (r1.y != 0.0 || r2.y != 0.0)) {
                let a = pr[p1];
                let d = pr[p2];
                let ii = pk(a.x, d.x);
                let ij = pk(a.x, d.y);
                let ji = pk(a.y, d.x);
                let jj = pk(a.y, d.y);
                let b00 = g[ii];
                let b01 = g[ij];
                let b10 = g[ji];
                let b11 = g[jj];
                // columns: (i₂, j₂) ← (c₂·i₂ − s₂·j₂, s₂·i₂ + c₂·j₂)
                let c00 = r2.x * b00 - r2.y * b01;
                let c01 = r2.y * b00 + r2.x * b01;
                let c10 = r2.x * b10 - r2.y * b11;
                let c11 = r2.y * b10 + r2.x * b11;
                // rows: (i₁, j₁) ← (c₁·i₁ − s₁·j₁, s₁·i₁ + c₁·j₁)
                g[ii] = r1.x * c00 - r1.y * c10;
                g[ij] = r1.x * c01 - r1.y * c11;
                g[jj] = r1.y * c01 + r1.x * c11;
                if (p1 != p2) { g[ji] = r1.y * c00 + r1.x * c10; }
              }
            }
            for (var e = lid; e < Q * H; e = e + ${wg}) {
              let k = e / H;
              let pp = e % H;
              let rot = cs[pp];
              if (rot.y != 0.0) {
                let ij = pr[pp];
                let vi = jm[k * Q + ij.x];
                let vj = jm[k * Q + ij.y];
                jm[k * Q + ij.x] = rot.x * vi - rot.y * vj;
                jm[k * Q + ij.y] = rot.y * vi + rot.x * vj;
              }
            }
            workgroupBarrier();
          }
`
}
          swept = sweep + 1;
          if (uniforms.innerExit != 0 && sweep + 1 < inner) {
            // whether the next sweep would rotate anything (the test it makes, on the G it starts from):
            // one barrier here instead of a sweep of ${2 * (q - 1)} that rotates nothing
            if (lid == 0) { rotated = 0u; }
            workgroupBarrier();
            for (var e = lid; e < Q * Q; e = e + ${wg}) {
              let i = e / Q;
              let j = e % Q;
              if (j > i && abs(g[gb + pk(i, j)]) > tol * sqrt(g[gb + pk(i, i)]) * sqrt(g[gb + pk(j, j)])) {
                rotated = 1u;
              }
            }
          }
          if (workgroupUniformLoad(&rotated) == 0u) { break; }
        }
        if (lid == 0) { result[statSweeps] = f32(swept); }
        // J's columns back to unit norm: what rounding leaves of its orthogonality is then second order in σ
        if (lid < Q) {
          var ss = 0.0;
          for (var r = 0; r < Q; r = r + 1) { ss = ss + jm[r * Q + lid] * jm[r * Q + lid]; }
          let f = 1.0 / sqrt(ss);
          for (var r = 0; r < Q; r = r + 1) { jm[r * Q + lid] = jm[r * Q + lid] * f; }
        }
        workgroupBarrier();
        if (uniforms.polish != 0) {
          // and what is left of JᵀJ − I = F (every rotation's rounding) taken out to first order,
          // J ← J·(I − F/2): F in G's place (no longer needed), then each row of J by ${wg / q} threads
          for (var e = lid; e < Q * Q; e = e + ${wg}) {
            let a = e / Q;
            let c = e % Q;
            if (c >= a) {
              var t = 0.0;
              for (var r = 0; r < Q; r = r + 1) { t = t + jm[r * Q + a] * jm[r * Q + c]; }
              g[pk(a, c)] = t - select(0.0, 1.0, a == c);
            }
          }
          workgroupBarrier();
          let k = lid / ${wg / q};
          let c0 = (lid % ${wg / q}) * ${(q * q) / wg};
          var row : array<f32, ${q}>;
          for (var a = 0; a < Q; a = a + 1) { row[a] = jm[k * Q + a]; }
          workgroupBarrier();
          for (var j = 0; j < ${(q * q) / wg}; j = j + 1) {
            let c = c0 + j;
            var t = 0.0;
            for (var a = 0; a < Q; a = a + 1) { t = t + row[a] * g[pk(a, c)]; }
            jm[k * Q + c] = row[c] - 0.5 * t;
          }
          workgroupBarrier();
        }`;
}

/**
 * One workgroup a pair: G = Σ of its partial Gram matrices, then {@link pairJacobi}, and J written to
 * result[p·Q² …]. Each round of the round-robin order rotates Q/2 disjoint pairs at once, every 2×2
 * block of G (G ← RᵀGR) and every row of J (J ← J·R) owned by one thread, so that a round is two
 * barriers. J's columns are then normalised and its rounding taken out to first order
 * (J ← J·(I − (JᵀJ − I)/2)): V is the product of some thousand such J at 4096², and without this its
 * loss of orthogonality (3× larger at 512²) dominates U·S·Vh − A.
 */
function jacobiProgram(b: number, pairs: number, merged: boolean): WebGPUProgram {
  const q = 2 * b;
  const wg = JACOBI_WG;
  return {
    outputShape: [pairs * q * q],
    shaderKey: `LoraJacobiRotate_${b}${merged ? '_merged' : ''}`,
    dispatchLayout: { x: [0] },
    dispatch: [pairs, 1, 1],
    variableNames: ['P'],
    workgroupSize: [wg, 1, 1],
    uniforms: UNIFORMS,
    getUserCode: () => `
      ${pairing(b)}
      ${pairDecls(b, wg, merged)}
      fn main(index : i32) {
        let lid = i32(localId.x);
        let p = i32(workgroupId.x);
        let tol = uniforms.tol;
        for (var e = lid; e < Q * Q; e = e + ${wg}) {
          let i = e / Q;
          let j = e % Q;
          if (j >= i) {
            // four partial sums at a time: four loads in flight rather than one after another
            let base = p * uniforms.chunks * Q * Q + e;
            var s4 = vec4<f32>(0.0);
            var c = 0;
            for (; c + 4 <= uniforms.chunks; c = c + 4) {
              let o = base + c * Q * Q;
              s4 = s4 + vec4<f32>(P[o], P[o + Q * Q], P[o + 2 * Q * Q], P[o + 3 * Q * Q]);
            }
            var s = (s4.x + s4.y) + (s4.z + s4.w);
            for (; c < uniforms.chunks; c = c + 1) { s = s + P[base + c * Q * Q]; }
            g[pk(i, j)] = s;
          }
          jm[e] = select(0.0, 1.0, i == j);
        }
        workgroupBarrier();
        ${pairJacobi(b, wg, merged)}
        for (var e = lid; e < Q * Q; e = e + ${wg}) { result[p * Q * Q + e] = jm[e]; }
      }`,
  };
}

/**
 * A whole step in one program, one workgroup a pair (option `fused`): the pair's Gram matrix over all
 * m rows of A (tiles of Q rows staged in `jm`, the next tile's loads in flight while this one is
 * summed, each thread an S×S block of G), {@link pairJacobi}, then [Aᵢ Aⱼ; Vᵢ Vⱼ] ← [Aᵢ Aⱼ; Vᵢ Vⱼ]·J
 * in place, in tiles of Q rows staged in `jm` in the same way (each thread one column of J in
 * registers; a warp reads one row of the tile at once, a broadcast). The pair's largest
 * cosine and inner sweeps go to X's rows below M (result[stats …]). Two programs fewer a step than
 * the split path, and no partial Gram matrices or J in global memory; the price is that the Gram and
 * the rotation are spread over `pairs` workgroups only.
 */
function fusedProgram(b: number, pairs: number, shape: number[], merged: boolean): WebGPUProgram {
  const q = 2 * b;
  const wg = JACOBI_WG;
  // each thread sums an S×S block of the Q×Q Gram matrix, (Q/S)² = wg threads
  const s = q / Math.sqrt(wg);
  const per = (q * q) / wg;
  // this thread's PER elements of the Q-row tile of X from row `first…` into `pre` (zero past `limit` rows)
  const prefetch = (first: string, limit: 'rows' | 'allRows') => `for (var k = 0; k < PER; k = k + 1) {
          let e = lid + k * ${wg};
          let r = ${first}e / Q;
          var v = 0.0;
          if (r < uniforms.${limit}) { v = result[r * uniforms.cols + colOf(e % Q, blocks)]; }
          pre[k] = v;
        }`;
  return {
    outputShape: shape,
    shaderKey: `LoraJacobiFused_${b}${merged ? '_merged' : ''}`,
    dispatchLayout: { x: [0] },
    dispatch: [pairs, 1, 1],
    variableNames: [],
    workgroupSize: [wg, 1, 1],
    uniforms: UNIFORMS,
    getUserCode: () => `
      ${pairing(b)}
      ${pairDecls(b, wg, merged)}
      const S = ${s};
      const PER = ${per};
      fn main(index : i32) {
        let lid = i32(localId.x);
        let p = i32(workgroupId.x);
        let tol = uniforms.tol;
        let blocks = pairBlocks(uniforms.step, p);
        let ta = (lid / ${q / s}) * S;
        let tc = (lid % ${q / s}) * S;
        var acc : array<f32, ${s * s}>;
        for (var k = 0; k < S * S; k = k + 1) { acc[k] = 0.0; }
        // the first tile's entries, thread lid taking entries lid, lid + wg, … of the Q×Q tile
        var pre : array<f32, PER>;
        ${prefetch('', 'rows')}
        for (var t0 = 0; t0 < uniforms.rows; t0 = t0 + Q) {
          for (var k = 0; k < PER; k = k + 1) { jm[lid + k * ${wg}] = pre[k]; }
          workgroupBarrier();
          ${prefetch('t0 + Q + ', 'rows')}
          for (var r = 0; r < Q; r = r + 1) {
            let o = r * Q;
            for (var i = 0; i < S; i = i + 1) {
              let x = jm[o + ta + i];
              for (var j = 0; j < S; j = j + 1) { acc[i * S + j] = acc[i * S + j] + x * jm[o + tc + j]; }
            }
          }
          workgroupBarrier();
        }
        for (var i = 0; i < S; i = i + 1) {
          for (var j = 0; j < S; j = j + 1) {
            if (tc + j >= ta + i) { g[pk(ta + i, tc + j)] = acc[i * S + j]; }
          }
        }
        for (var e = lid; e < Q * Q; e = e + ${wg}) { jm[e] = select(0.0, 1.0, e / Q == e % Q); }
        workgroupBarrier();
        ${pairJacobi(b, wg, merged)}
        // J's column c of this thread in registers; jm then stages Q rows of X at a time, loaded and
        // written back coalesced (a warp's lanes take consecutive columns), the next tile's loads in
        // flight while this one is rotated
        let c = lid % Q;
        let rg = lid / Q;
        let col = colOf(c, blocks);
        var jc : array<f32, ${q}>;
        for (var a = 0; a < Q; a = a + 1) { jc[a] = jm[a * Q + c]; }
        ${prefetch('', 'allRows')}
        workgroupBarrier();
        for (var t0 = 0; t0 < uniforms.allRows; t0 = t0 + Q) {
          for (var k = 0; k < PER; k = k + 1) { jm[lid + k * ${wg}] = pre[k]; }
          workgroupBarrier();
          ${prefetch('t0 + Q + ', 'allRows')}
          for (var rr = rg; rr < Q; rr = rr + ${wg / q}) {
            let r = t0 + rr;
            if (r < uniforms.allRows) {
              var o = 0.0;
              for (var a = 0; a < Q; a = a + 1) { o = o + jm[rr * Q + a] * jc[a]; }
              result[r * uniforms.cols + col] = o;
            }
          }
          workgroupBarrier();
        }
      }`,
  };
}

/**
 * [Aᵢ Aⱼ] ← [Aᵢ Aⱼ]·J in place over all rows of X (A and V), for the pairs whose J was computed;
 * workgroup (p, t) takes rows t·chunkRows …, in tiles of 2048/Q rows, each thread 2 rows × 4 columns.
 */
function rotateProgram(b: number, pairs: number, rowGroups: number, shape: number[]): WebGPUProgram {
  const q = 2 * b;
  const tile = 2048 / q;
  const c4 = q / 4;
  const wg = (tile / 2) * c4;
  return {
    outputShape: shape,
    shaderKey: `LoraJacobiApply_${b}`,
    dispatchLayout: { x: [0] },
    dispatch: [pairs, rowGroups, 1],
    variableNames: ['J'],
    workgroupSize: [wg, 1, 1],
    uniforms: UNIFORMS,
    getUserCode: () => `
      ${pairing(b)}
      const TR = ${tile};
      const C4 = ${c4};
      var<workgroup> jm : array<f32, ${q * q}>;
      var<workgroup> tile : array<f32, ${tile * q}>;
      var<workgroup> flag : f32;
      fn main(index : i32) {
        let lid = i32(localId.x);
        let p = i32(workgroupId.x);
        let t = i32(workgroupId.y);
        if (lid == 0) { flag = J[uniforms.stats + uniforms.step * uniforms.pairs + p]; }
        let off = workgroupUniformLoad(&flag);
        if (off <= uniforms.tol) { return; }
        for (var e = lid; e < Q * Q; e = e + ${wg}) { jm[e] = J[p * Q * Q + e]; }
        let blocks = pairBlocks(uniforms.step, p);
        let rr = (lid / C4) * 2;
        let cc = (lid % C4) * 4;
        let col = colOf(cc, blocks);
        for (var it = 0; it < uniforms.chunkRows / TR; it = it + 1) {
          let t0 = t * uniforms.chunkRows + it * TR;
          for (var e = lid; e < TR * Q; e = e + ${wg}) {
            let r = t0 + e / Q;
            var v = 0.0;
            if (r < uniforms.rows) { v = result[r * uniforms.cols + colOf(e % Q, blocks)]; }
            tile[e] = v;
          }
          workgroupBarrier();
          var acc0 = vec4<f32>(0.0);
          var acc1 = vec4<f32>(0.0);
          for (var a = 0; a < Q; a = a + 1) {
            let jv = vec4<f32>(jm[a * Q + cc], jm[a * Q + cc + 1], jm[a * Q + cc + 2], jm[a * Q + cc + 3]);
            acc0 = acc0 + tile[rr * Q + a] * jv;
            acc1 = acc1 + tile[(rr + 1) * Q + a] * jv;
          }
          let r = t0 + rr;
          for (var j = 0; j < 4; j = j + 1) {
            if (r < uniforms.rows) { result[r * uniforms.cols + col + j] = acc0[j]; }
            if (r + 1 < uniforms.rows) { result[(r + 1) * uniforms.cols + col + j] = acc1[j]; }
          }
          workgroupBarrier();
        }
      }`,
  };
}

/** Rows a workgroup takes (a multiple of `tile`) so that about TARGET_WORKGROUPS / pairs groups cover `rows`. */
function chunking(rows: number, pairs: number, tile: number): { chunkRows: number; chunks: number } {
  const want = Math.max(1, Math.min(Math.ceil(TARGET_WORKGROUPS / pairs), Math.ceil(rows / tile)));
  const chunkRows = Math.ceil(rows / want / tile) * tile;
  return { chunkRows, chunks: Math.ceil(rows / chunkRows) };
}

/** Count of the programs the last {@link svdJacobi} ran (for the benchmark's report). @internal */
export const jacobiStats = {
  dispatches: 0,
  sweeps: 0,
  off: Number.NaN,
  /** inner sweeps of all pairs at all steps */
  innerSweeps: 0,
  /** Σ over steps of the most inner sweeps a pair of the step took (what bounds the Jacobi programs' time) */
  serialInnerSweeps: 0,
  /** each sweep's largest cosine */
  offs: [] as number[],
  /** the largest cosine each check (option checkBelow) found */
  checks: [] as number[],
};

/**
 * The Jacobi core on a tall m×n (m ≥ n) float32 tensor: the thin U (m×n), S (n, descending) and
 * V (n×n). Leaves `a` to the caller.
 */
async function jacobiCore(
  a: tf.Tensor2D,
  options: JacobiSvdOptions,
  check: (stage: string, done: number, total: number) => Promise<void>,
  held: Held,
): Promise<{ U: tf.Tensor2D; S: tf.Tensor1D; V: tf.Tensor2D }> {
  const backend = tf.backend() as unknown as WebGPUBackend;
  const [m, n] = a.shape;
  const b = options.block ?? 16;
  if (b !== 16 && b !== 32) throw new LinalgError(`svd: Jacobi block ${b} is not 16 or 32 (the columns of a block)`);
  if (b === 32 && storageLimit(backend) < JACOBI_STORAGE_32)
    throw new LinalgError(
      `svd: Jacobi block 32 needs ${JACOBI_STORAGE_32} bytes of workgroup memory; this device has ${storageLimit(backend)} (use block 16)`,
    );
  if (options.mergedRounds && b !== 16)
    throw new LinalgError(
      `svd: Jacobi mergedRounds needs block 16 (a thread a 2×2 block of G, and two copies of G in workgroup memory); got block ${b}: use block 16 or mergedRounds false`,
    );
  const innerSweeps = options.innerSweeps ?? INNER_SWEEPS;
  if (!(Number.isInteger(innerSweeps) && innerSweeps >= 1))
    throw new LinalgError(
      `svd: Jacobi innerSweeps ${innerSweeps} is not a positive integer (the cyclic sweeps a pair's Gram matrix takes at most a step)`,
    );
  const q = 2 * b;
  const N = Math.ceil(n / q) * q;
  const nb = N / b;
  const pairs = nb / 2;
  const steps = nb - 1;
  const M = m + N;
  const fused = options.fused ?? false;
  const merged = options.mergedRounds ?? false;
  // each (step, pair)'s largest cosine, then its inner sweeps
  const statSize = 2 * steps * pairs;
  const statRows = Math.ceil(statSize / N);
  const maxSweeps = options.maxSweeps ?? 30;
  const checkBelow = options.checkBelow ?? CHECK_BELOW;
  // a pair is rotated while its cosine is above √m·2⁻²⁵ (rounding leaves the computed cosines of
  // orthogonal columns well below that: 512² and the battery converge in no more sweeps than with
  // √m·2⁻²³, and 4× as orthogonal), and the sweeps stop once no pair was off by more than twice that:
  // such a sweep's rotations are at the rounding's level, and a sweep after it would only confirm
  const tol = Math.max(Math.sqrt(m), 4) * 2 ** -25;
  const stop = 2 * tol;

  // scaled by a power of two so that the largest entry is near 1: the Gram entries neither overflow nor underflow
  const amaxT = tf.tidy(() => tf.max(tf.abs(a)));
  const amax = (await amaxT.data())[0] as number;
  amaxT.dispose();
  const scale = amax > 0 ? 2 ** -Math.round(Math.log2(amax)) : 1;
  let x = held.take(
    tf.tidy(() => {
      const top = tf.pad(tf.mul(tf.cast(a, 'float32'), scale), [
        [0, 0],
        [0, N - n],
      ]);
      // the fused program keeps each pair's largest cosine and inner sweeps in rows of its own below M
      const parts = [top, tf.eye(N)];
      if (fused) parts.push(tf.zeros([statRows, N]));
      return tf.concat(parts, 0) as tf.Tensor2D;
    }),
  );
  const gram = chunking(m, pairs, GRAM_TILE);
  const apply = chunking(M, pairs, 2048 / q);
  // the split path's buffers: partial Gram matrices; each pair's J, then the stats
  const bufs = fused
    ? null
    : {
        partials: held.take(tf.zeros([pairs * gram.chunks * q * q])),
        jbuf: held.take(tf.zeros([pairs * q * q + statSize])),
      };
  const statsAt = fused ? M * N : pairs * q * q;
  const split = options.singleSweepAbove ?? 2;
  // one entry a field: the backend aligns a longer entry as a vector
  const uniforms = (step: number, rows: number, c: { chunkRows: number; chunks: number }): Uniform[] => [
    ...[nb, step, rows, N, c.chunkRows, c.chunks].map((v): Uniform => ({ type: 'int32', data: [v] })),
    { type: 'float32', data: [tol] },
    { type: 'int32', data: [pairs] },
    { type: 'int32', data: [innerSweeps] },
    { type: 'int32', data: [options.polish === false ? 0 : 1] },
    { type: 'int32', data: [statsAt] },
    { type: 'int32', data: [M] },
    // a cosine is at most 1: 2 is "never"
    { type: 'float32', data: [Math.min(split, 2)] },
    { type: 'int32', data: [options.innerExit === true ? 1 : 0] },
  ];
  const gramP = gramProgram(b, pairs, gram.chunks);
  const jacobiP = jacobiProgram(b, pairs, merged);
  const applyP = rotateProgram(b, pairs, apply.chunks, [M, N]);
  const fusedP = fused ? fusedProgram(b, pairs, [M + statRows, N], merged) : null;
  jacobiStats.dispatches = 0;
  jacobiStats.sweeps = 0;
  jacobiStats.innerSweeps = 0;
  jacobiStats.serialInnerSweeps = 0;
  jacobiStats.offs = [];
  jacobiStats.checks = [];
  const sortColumns = options.sortColumns ?? true;
  // origin[k]: the column of the input now at column k (the sweeps reorder them)
  let origin = Int32Array.from({ length: N }, (_, i) => i);
  let off = Number.POSITIVE_INFINITY;
  let lastOff = Number.POSITIVE_INFINITY;
  if (steps > 0) {
    for (let sweep = 0; sweep < maxSweeps; sweep++) {
      for (let step = 0; step < steps; step++) {
        // each call gets a fresh program object: the backend writes its dispatch and pipeline into it
        if (bufs) {
          const { partials, jbuf } = bufs;
          backend.runWebGPUProgram({ ...gramP }, [x], 'float32', uniforms(step, m, gram), partials);
          backend.runWebGPUProgram({ ...jacobiP }, [partials], 'float32', uniforms(step, m, gram), jbuf);
          backend.runWebGPUProgram({ ...applyP }, [jbuf], 'float32', uniforms(step, M, apply), x);
          jacobiStats.dispatches += 3;
        } else {
          backend.runWebGPUProgram({ ...(fusedP as WebGPUProgram) }, [], 'float32', uniforms(step, m, gram), x);
          jacobiStats.dispatches += 1;
        }
      }
      // the sweep's largest cosine, and the columns' norms: the next sweep takes them in decreasing
      // order (de Rijk), which a graded spectrum needs to converge in fewer sweeps
      const xNow = x;
      const stats = tf.tidy(() =>
        tf.concat([
          bufs
            ? tf.slice(bufs.jbuf, statsAt, statSize)
            : tf.slice(tf.reshape(tf.slice(xNow, [M, 0], [statRows, N]), [-1]), 0, statSize),
          tf.sum(tf.square(tf.slice(xNow, [0, 0], [m, N])), 0),
        ]),
      );
      const values = (await stats.data()) as Float32Array;
      stats.dispose();
      off = 0;
      for (let i = 0; i < steps * pairs; i++) off = Math.max(off, values[i] as number);
      jacobiStats.offs.push(off);
      // the Jacobi programs' serial work: a step takes as long as its pair with the most inner sweeps
      for (let step = 0; step < steps; step++) {
        let most = 0;
        for (let p = 0; p < pairs; p++) {
          const k = values[steps * pairs + step * pairs + p] as number;
          jacobiStats.innerSweeps += k;
          most = Math.max(most, k);
        }
        jacobiStats.serialInnerSweeps += most;
      }
      if (sortColumns && off > stop) {
        const norm2 = values.subarray(statSize);
        const perm = Array.from({ length: N }, (_, i) => i).sort(
          (i, j) => (norm2[j] as number) - (norm2[i] as number) || i - j,
        );
        if (perm.some((v, i) => v !== i)) {
          const idx = tf.tensor1d(Int32Array.from(perm), 'int32');
          const next = held.take(tf.gather(x, idx, 1) as tf.Tensor2D);
          idx.dispose();
          held.release(x);
          x.dispose();
          x = next;
          origin = Int32Array.from(perm, (i) => origin[i] as number);
        }
      }
      jacobiStats.sweeps = sweep + 1;
      await check('jacobi', sweep + 1, maxSweeps);
      // or once they stall within 4× of it (rounding, not convergence, sets the cosines)
      if (off <= stop || (off <= 4 * stop && off > 0.5 * lastOff)) break;
      if (off <= checkBelow) {
        // every pair's cosine now (padding columns are zero: 0/0 is taken as 0)
        const xCheck = x;
        const cosT = tf.tidy(() => {
          const top = tf.slice(xCheck, [0, 0], [m, N]);
          const d = tf.sqrt(tf.sum(tf.square(top), 0)) as tf.Tensor1D;
          const cos = tf.divNoNan(tf.abs(tf.matMul(top, top, true, false)), tf.outerProduct(d, d));
          return tf.max(tf.mul(cos, tf.sub(1, tf.eye(N))));
        });
        const now = (await cosT.data())[0] as number;
        cosT.dispose();
        jacobiStats.checks.push(now);
        if (now <= stop) {
          off = now;
          break;
        }
      }
      lastOff = off;
    }
  }
  jacobiStats.off = off;
  await check('vectors', 0, 1);

  // σₖ = ‖aₖ‖/‖vₖ‖ (vₖ drifts from unit norm by rounding; A₀·vₖ = aₖ), sorted descending; uₖ = aₖ/‖aₖ‖.
  // The input's columns are those that started below n (the padding's never mix with them).
  const xEnd = x;
  const norms = tf.tidy(() =>
    tf.sqrt(
      tf.concat([
        tf.sum(tf.square(tf.slice(xEnd, [0, 0], [m, N])), 0),
        tf.sum(tf.square(tf.slice(xEnd, [m, 0], [n, N])), 0),
      ]),
    ),
  );
  const both = (await norms.data()) as Float32Array;
  norms.dispose();
  const an = both.subarray(0, N);
  const vn = both.subarray(N);
  const sig = Float32Array.from(an, (s, k) => s / (vn[k] as number));
  const order = [...origin.keys()]
    .filter((k) => (origin[k] as number) < n)
    .sort((i, j) => (sig[j] as number) - (sig[i] as number) || (origin[i] as number) - (origin[j] as number));
  const sorted = Float32Array.from(order, (i) => sig[i] as number);
  const floor = (sorted[0] as number) * NEGLIGIBLE;
  const deficient = [...sorted.keys()].filter((k) => !((sorted[k] as number) > floor));
  const idx = tf.tensor1d(Int32Array.from(order), 'int32');
  const invA = tf.tensor1d(
    Float32Array.from(order, (i, k) => ((sorted[k] as number) > floor ? 1 / (an[i] as number) : 0)),
  );
  const invV = tf.tensor1d(Float32Array.from(order, (i) => 1 / (vn[i] as number)));
  const out = tf.tidy(() => ({
    U: tf.mul(tf.gather(tf.slice(xEnd, [0, 0], [m, N]), idx, 1), invA) as tf.Tensor2D,
    V: tf.mul(tf.gather(tf.slice(xEnd, [m, 0], [n, N]), idx, 1), invV) as tf.Tensor2D,
  }));
  tf.dispose([idx, invA, invV]);
  let U = out.U;
  if (deficient.length && options.complete !== false) {
    held.take(U);
    held.take(out.V);
    U = await completeColumns(U, deficient, options, check, held);
    held.release(out.V);
  }
  return { U, S: tf.tensor1d(sorted.map((s) => s / scale)), V: out.V };
}

/**
 * U with its columns `deficient` (zero singular values) replaced by orthonormal vectors orthogonal to
 * all the others, as LAPACK's U is for rank-deficient input: Gaussian vectors projected twice onto
 * the complement of the kept columns, then orthonormalised by this same Jacobi SVD (their left
 * vectors). `u` (held) is disposed; the result is not held.
 */
async function completeColumns(
  u: tf.Tensor2D,
  deficient: number[],
  options: JacobiSvdOptions,
  check: (stage: string, done: number, total: number) => Promise<void>,
  held: Held,
): Promise<tf.Tensor2D> {
  const [m, n] = u.shape;
  const bad = new Set(deficient);
  const kept = [...Array(n).keys()].filter((k) => !bad.has(k));
  const c = held.take(
    tf.tidy(() => {
      let r = tf.randomNormal([m, deficient.length], 0, 1, 'float32', 13) as tf.Tensor2D;
      if (kept.length) {
        const uk = tf.gather(u, kept, 1);
        for (let pass = 0; pass < 2; pass++) r = tf.sub(r, tf.matMul(uk, tf.matMul(uk, r, true, false)));
      }
      return r;
    }),
  );
  const basis = await jacobiCore(c, { ...options, complete: false }, check, held);
  tf.dispose([basis.S, basis.V]);
  // kept columns from u, the deficient ones from the basis, in their places
  const place = new Int32Array(n);
  for (const [k, col] of kept.entries()) place[col] = k;
  for (const [j, col] of deficient.entries()) place[col] = kept.length + j;
  const out = tf.tidy(() => tf.gather(tf.concat([tf.gather(u, kept, 1), basis.U], 1), place, 1) as tf.Tensor2D);
  for (const t of [u, c]) {
    held.release(t);
    t.dispose();
  }
  basis.U.dispose();
  return out;
}

/**
 * Thin SVD of a 2-D float32 tensor on webgpu by blocked one-sided Jacobi (see the file's comment).
 * Wide input is decomposed transposed; input at least twice as tall as wide is QR-factored first
 * (CholeskyQR2 on the backend, see `qrMethod`), and R decomposed. Progress stages: 'qr' (when QR comes first), 'jacobi' (a sweep
 * each), 'vectors'. Leaves `input` to the caller.
 * @internal
 */
export async function svdJacobi(
  input: tf.Tensor2D,
  options: JacobiSvdOptions = {},
): Promise<{ U: tf.Tensor2D; S: tf.Tensor1D; Vh: tf.Tensor2D }> {
  const check = checkpoints(options);
  const [m0, n0] = input.shape;
  const wide = m0 < n0;
  const [m, n] = wide ? [n0, m0] : [m0, n0];
  const held = new Held();
  try {
    const tall = wide ? held.take(tf.transpose(input) as tf.Tensor2D) : input;
    let qrBlocks: ReflectorBlock[] = [];
    let qFactor: tf.Tensor2D | null = null;
    let core: tf.Tensor2D = tall;
    const qrMethod = options.qrMethod ?? 'cholesky';
    if (qrMethod !== 'householder' && qrMethod !== 'cholesky')
      throw new LinalgError(`svd: qrMethod ${JSON.stringify(qrMethod)} must be 'householder' or 'cholesky'`);
    if (m >= (options.qrFirstRatio ?? 2) * n) {
      await check('qr', 0, 1);
      const byCholesky = qrMethod === 'cholesky' ? await choleskyQr2Blocked(tall) : null;
      if (byCholesky) {
        qFactor = held.take(byCholesky.q);
        core = held.take(byCholesky.r);
        await check('qr', 1, 1);
      } else if (qrMethod === 'householder') {
        const qrd = await qrBlocked(tall, { between: (done, total) => check('qr', done, total) });
        qrBlocks = joinBlocks(qrd.blocks, 128);
        core = held.take(tf.tensor2d(Float32Array.from(qrd.r), [n, n]));
      }
    }
    const r = await jacobiCore(core, options, check, held);
    held.take(r.V);
    let u = held.take(r.U);
    const S = held.take(r.S);
    if (qFactor) {
      // U = Q·U_R
      const product = held.take(tf.matMul(qFactor, u) as tf.Tensor2D);
      held.release(u);
      u.dispose();
      u = product;
      await check('vectors', 1, 1);
    } else if (qrBlocks.length) {
      // U = Q·[U_R; 0]
      const grown = held.take(tf.tidy(() => tf.concat([u, tf.zeros([m - n, n])], 0) as tf.Tensor2D));
      held.release(u);
      u.dispose();
      let done = 0;
      u = await applyAll(grown, qrBlocks, held, () => check('vectors', ++done, qrBlocks.length));
    }
    // a wide input was decomposed transposed: aᵀ = U·S·Vᵀ, so a = V·S·Uᵀ
    const [left, right] = wide ? [r.V, u] : [u, r.V];
    const Vh = tf.transpose(right) as tf.Tensor2D;
    held.release(left);
    held.release(S);
    return { U: left, S, Vh };
  } finally {
    held.dispose();
  }
}
