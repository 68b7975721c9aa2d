#!/usr/bin/env bash
# Issue 13 on the GPU machine, from the repo root, in one call (≈ 3 minutes, at most 360 s):
#  1. the full float32 SVD on the host CPU, wasm on one thread, against numpy's float32 gesdd on one thread,
#     on the same matrices in the same process tree (bench/profile-full.ts: CPU time by stage);
#  2. the full SVD on webgpu (blocked one-sided Jacobi in WGSL, svd-jacobi.ts) against torch CUDA (and numpy /
#     torch CPU on 16 threads), bench/large-gpu.ts, for 1024², 4096² and 4096×11008 (BENCH_CASES overrides);
#     the accuracy column also counts the programs each of our SVDs dispatched.
# Needs .device/bundle/{profile-full,large-gpu}.mjs (notes/bundle.sh) and tfjs-backend-wasm's .wasm files in
# packages/linalg/.bench/wasm/. Writes $OUT_13/{cpu.txt,gpu.md,gpu.err}.
set -uo pipefail
source .device/setup.sh
out=${OUT_13:-/tmp/out13}
mkdir -p "$out"
# numpy's own kernel choice is the fair peer (a machine-wide OPENBLAS_CORETYPE would pin an older one)
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
{
  date -u; nproc; lscpu | grep -m1 'Model name'; python3 -c 'import numpy; print("numpy", numpy.__version__)'
  for shape in "1024 1024 2" "1024 2816 0"; do
    LORA_WASM_DIR=$PWD/packages/linalg/.bench/wasm PYTHON=python3 timeout 30 $NODE .device/bundle/profile-full.mjs $shape
  done
} > "$out/cpu.txt" 2>&1
unset OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS
BENCH_CASES=${BENCH_CASES:-full_1024,full_4096,full_4096x11008} BENCH_PEER_THREADS=16 BENCH_MAX_WAIT_MS=3000 BENCH_CASE_LIMIT_S=40 \
  timeout 300 $NODE .device/bundle/large-gpu.mjs > "$out/gpu.md" 2> "$out/gpu.err"
echo "large-gpu exit $?" >> "$out/gpu.err"
