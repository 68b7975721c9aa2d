/** Which code paths `@lora/kernels`' ops take. Every path gives the same results to float32 rounding. */
export interface KernelOptions {
  /**
   * Fused WGSL kernels on the webgpu backend (RMSNorm, RoPE, SwiGLU, masked softmax, cross-entropy,
   * AdamW): one dispatch where the composite takes several. Other backends always run the composite.
   * Default true.
   */
  fused: boolean;
  /**
   * On webgpu, products with a transposed operand use matMul's transpose flags (its programs read
   * the operand transposed: no Transpose dispatch) and tfjs's own matMul gradient, which computes a
   * frozen operand's gradient only when something needs it. Off, or on other backends, transposes
   * are explicit: on wasm a flagged product is ~13× slower. Default true.
   */
  transposeFlags: boolean;
  /**
   * The program webgpu's BatchMatMul runs for large products: tfjs's own (`'tfjs'`) or this
   * package's register-blocked tiled program (`'tiled'`: 128² or 64² tiles by the output's size,
   * tfjs's programs for thin outputs; `'tiled-64'` / `'tiled-128'` force a tile, for measuring).
   * Default `'tiled'` (on the H200 it took the 123M model's forward from 58.7 to 42.8 ms, the step
   * unchanged; see BENCHMARKS.md, issue 20).
   */
  matmul: 'tfjs' | 'tiled' | 'tiled-64' | 'tiled-128' | 'tiled-128x64' | 'tiled-64x128';
  /**
   * With `matmul: 'tiled'`: the fewest workgroups a product must give in 128² tiles to get them
   * (else 64² tiles, where it gives ≥ 32). A GPU with many compute units wants more (an H200 has 132).
   * Default 128.
   */
  largeTileGroups: number;
  /**
   * With `matmul: 'tiled'`: a tile between 64² and 128² (`'128x64'`: 128 rows × 64 columns, or
   * `'64x128'`) for products that give too few workgroups in 128² tiles (at least
   * `largeTileGroups / 2` in the medium tile), and for outputs a 128² tile would overhang by more than
   * a quarter (attention's 64-wide p·v). `'none'`: 128² or 64² only (round 3's choice). Default `'none'`.
   */
  mediumTile: 'none' | '128x64' | '64x128';
  /**
   * The tiled program lays each 32-thread subgroup over 8 × 4 register blocks (fewer distinct
   * workgroup-memory reads per k step) instead of a 16 × 2 strip. Same results. Default false.
   */
  matmulWarpLayout: boolean;
  /**
   * The tiled program keeps two slabs of A and B in workgroup memory where they fit: one barrier per
   * slab instead of two. Same results. Default false.
   */
  matmulDoubleBuffer: boolean;
  /** The tiled program writes its output as vec4s where N is a multiple of 4. Same results. Default false. */
  matmulVec4Store: boolean;
  /**
   * The K-depth of the tiled program's workgroup-memory slabs: 16, 32, or `'auto'` (32 for products
   * with K ≥ 2048, else 16). 32 halves the barriers per product and doubles the workgroup memory (two
   * slabs of a 128² tile then no longer fit in 48 KiB, so `matmulDoubleBuffer` falls back to one). On
   * the H200 32 was faster for every long-K product measured (the 123M model's down projection, K =
   * 2816: 446 → 413 µs; dy·W of gate/up, K = 2816: 478 → 393; of the LM head, K = 32000: 5 479 →
   * 4 319) and slower for every K = 1024 one (the LM head's x·Wᵀ: 3 755 → 4 601 µs); `'auto'` takes
   * each where it was faster: in round 5's call the 123M LoRA step went from 79.7 / 82.5 ms (16) to
   * 78.2 / 74.0 ms, the forward unchanged. Same results. Default `'auto'`.
   */
  matmulDepth: 16 | 32 | 'auto';
  /**
   * Products that give the tiled program too few workgroups (under 96; e.g. the 123M model's k/v
   * projections, 2048 × 256 with K = 1024) split K over up to 4 workgroups per tile and sum the
   * partial outputs in one more dispatch; with a `mediumTile`, such products keep the medium tile.
   * Sums in another order: results differ from the unsplit program by float32 rounding. Default false.
   */
  matmulSplitK: boolean;
  /**
   * With `matmul: 'tiled'`: rank-wide products over a long K (one side ≤ 64, the other ≥ 256, K ≥ 256:
   * LoRA's x·Aᵀ, dy·B, dyᵀ·h, dhᵀ·x) take a 64 × 16 (or 16 × 64) tile of the tiled program, their K
   * split with `matmulSplitK`, instead of tfjs's programs. Default false.
   */
  thinTiles: boolean;
  /**
   * With `matmul: 'tiled'`: x·Aᵀ-shaped products (A plain, B transposed and shared by every batch,
   * N ≤ 64, K ≥ 256 a multiple of 4, at least 256 rows: LoRA's x·Aᵀ) take a thin-output program that
   * splits K over 16 threads per row and adds their partial sums in workgroup memory: one dispatch.
   * Default true (on the H200: LoRA's x·Aᵀ at the 123M model's shapes 46 → 20 µs and 118 → 52 µs a
   * product, the forward's GPU time 1–2 ms less; see BENCHMARKS.md, issue 20 round 4).
   */
  thinRows: boolean;
  /**
   * On webgpu, dispatches reuse uniform buffers (by content) and bind groups (by pipeline and
   * buffers) instead of making both anew each time, which is most of a dispatch's host time through
   * Dawn in Node (`@lora/tensor`'s dispatch cache, which `initBackend('webgpu')` installs; this option
   * sets `setDispatchCache`). Default true.
   */
  dispatchCache: boolean;
  /**
   * On webgpu with `fused`, a LoRA layer's `base + s·(x·Aᵀ)·Bᵀ` takes its B product, scale and add
   * in one dispatch (`addLowRank`) instead of a matMul and a scaled add. Default true.
   */
  fusedLora: boolean;
}

export const DEFAULT_KERNEL_OPTIONS: Readonly<KernelOptions> = {
  fused: true,
  transposeFlags: true,
  matmul: 'tiled',
  largeTileGroups: 128,
  mediumTile: 'none',
  matmulWarpLayout: false,
  matmulDoubleBuffer: false,
  matmulVec4Store: false,
  matmulDepth: 'auto',
  matmulSplitK: false,
  thinTiles: false,
  thinRows: true,
  dispatchCache: true,
  fusedLora: true,
};
let current: KernelOptions = { ...DEFAULT_KERNEL_OPTIONS };

/** Sets the options in force (validated by `configureKernels`). */
export function setKernelOptions(options: KernelOptions): void {
  current = { ...options };
}

/** The options in force (see `configureKernels`). */
export function kernelOptions(): KernelOptions {
  return { ...current };
}

/** The options object itself, for hot paths that only read it. */
export function optionsRef(): Readonly<KernelOptions> {
  return current;
}
