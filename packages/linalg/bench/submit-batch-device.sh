#!/usr/bin/env bash
# Issue 13 on the GPU machine, from the repo root (≈ 5 minutes): does tfjs-webgpu's submit batch
# (WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE, 15 dispatches a submit by default) bound the Jacobi SVD at 1024² and
# 2048²? bench/large-gpu.ts once with the peers (torch CUDA, numpy / torch CPU on 16 threads), then ours
# alone (BENCH_PEERS=0) with batches of 15, 60, 250 and 1000 dispatches, in two rounds of opposite order.
# Needs .device/bundle/large-gpu.mjs (`../shared/device/pack packages/linalg/bench/large-gpu.ts`).
# Writes $OUT/summary.txt (one line a run) and $OUT/e.tgz (every run's tables and stderr).
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
date -u > "$OUT/summary.txt"
mkdir -p /tmp/e
BENCH_CASES=full_1024,full_2048 BENCH_RUNS=5 BENCH_PEER_THREADS=16 BENCH_MAX_WAIT_MS=5000 timeout 120 "$NODE" .device/bundle/large-gpu.mjs > /tmp/e/peer.md 2> /tmp/e/peer.err
grep "full SVD" /tmp/e/peer.md >> "$OUT/summary.txt"
for round in 1 2; do
  if [ "$round" = 1 ]; then order="15 60 250 1000"; else order="1000 250 60 15"; fi
  for b in $order; do
    BENCH_PEERS=0 BENCH_CASES=full_1024,full_2048 BENCH_RUNS=5 BENCH_MAX_WAIT_MS=5000 \
      BENCH_TF_FLAGS="{\"WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE\":$b}" timeout 60 "$NODE" .device/bundle/large-gpu.mjs \
      > "/tmp/e/r$round-b$b.md" 2> "/tmp/e/r$round-b$b.err"
    echo "round $round batch $b: $(grep -h '): svd' "/tmp/e/r$round-b$b.err" | cut -c1-200 | tr '\n' ' ')" >> "$OUT/summary.txt"
  done
done
date -u >> "$OUT/summary.txt"
cat /proc/loadavg >> "$OUT/summary.txt"
tar czf "$OUT/e.tgz" -C /tmp e
cat "$OUT/summary.txt"
