#!/usr/bin/env bash
# Issue 20 round 3, second call (about 1.5 minutes): addLowRank's new thread layout (one column of
# four rows per thread) on the H200, against PEFT in the same call. The PEFT peer (no matmul table
# needed, but the peer script always times it: a few seconds), then train-gpu.ts on 123M and 10M with
# round 2's default (fused+cache), addLowRank on tfjs's matmul (fused+cache+lora) and today's
# default; no matmul table. In $OUT: gpu.txt, peer.json, peer.err, r3b.md, r3b.err, results-r3b.json.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r3b.sh
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true
timeout 80 python3 packages/cli/bench/peer_train_gpu.py > "$OUT/peer.json" 2> "$OUT/peer.err"
echo "peer exit $?" >> "$OUT/peer.err"
LORA_GPU_TAG=r3b LORA_GPU_VARIANTS="${LORA_GPU_VARIANTS:-fused+cache,fused+cache+lora,default}" LORA_GPU_MATMUL=0 \
  timeout 120 "$NODE" .device/bundle/train-gpu.mjs > "$OUT/r3b.md" 2> "$OUT/r3b.err"
echo "ours exit $?" >> "$OUT/r3b.err"
ls -la "$OUT"
