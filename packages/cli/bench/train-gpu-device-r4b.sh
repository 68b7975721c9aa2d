#!/usr/bin/env bash
# Issue 20 round 4, second call (about 2.5 minutes): the tiled matmul's variations that the first call
# (train-gpu-device-r4.sh) left in question, each measured twice, against PEFT in the same call.
# (1) the PEFT peer (both models, its matmul table); (2) matmul throughput and GPU µs per product
# (averaged over 10 profiled products: Dawn quantizes timestamps to 65.5 µs) at the 123M model's shapes;
# (3) the 123M and ~10M forward + loss and LoRA step, each variant twice in interleaved order, parity.
# Results in $DEST (default $OUT_20, else $OUT): peer.json, r4bmm.md, r4b.md, err.txt, results.jsonl.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r4b.sh
set -uo pipefail
DEST="${DEST:-${OUT_20:-${OUT:?set OUT_20 or OUT to the folder for the results}}}"
mkdir -p "$DEST"
source .device/setup.sh
J=$(mktemp -d)
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; date -u; } > "$DEST/err.txt" 2>&1 || true
timeout 80 python3 packages/cli/bench/peer_train_gpu.py > "$DEST/peer.json" 2>> "$DEST/err.txt"
echo "peer exit $? $(date -u +%T)" >> "$DEST/err.txt"
export PEER="$DEST/peer.json"
LORA_GPU_TAG=r4bmm LORA_GPU_MODELS=none LORA_GPU_PARITY=0 LORA_GPU_MATMUL=model LORA_GPU_MM_FLOPS=1e12 \
  LORA_GPU_MM_PROGRAMS="${MM_PROGRAMS:-tiled-128,128+k32,128+warp,128+warp+k32,128+double,128+warp+double,128+all,128+all+k32,r3 policy,r3 policy+thinrows,k32 policy+thinrows,64+all+split,r4 policy+split+thin}" \
  OUT="$J" timeout 90 "$NODE" .device/bundle/train-gpu-r4b.mjs > "$DEST/r4bmm.md" 2>> "$DEST/err.txt"
echo "r4bmm exit $? $(date -u +%T)" >> "$DEST/err.txt"
V="r3,r3+thinrows,r4-k32,r4-k32+thinrows,r4-warp+k32+thinrows,r4-all"
LORA_GPU_TAG=r4b LORA_GPU_MODELS="${MODELS:-123m,10m}" LORA_GPU_MATMUL=0 LORA_GPU_RUNS=7 \
  LORA_GPU_VARIANTS="${VARIANTS:-$V,$V}" \
  OUT="$J" timeout 120 "$NODE" .device/bundle/train-gpu-r4b.mjs > "$DEST/r4b.md" 2>> "$DEST/err.txt"
echo "r4b exit $? $(date -u +%T)" >> "$DEST/err.txt"
for f in "$J"/results-*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done > "$DEST/results.jsonl"
ls -la "$DEST"
