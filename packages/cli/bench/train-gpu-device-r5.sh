#!/usr/bin/env bash
# Issue 20 round 5 (about 4 minutes): the slab depth by K (`matmulDepth: 'auto'`, 32-deep from K = 2048 on)
# against today's default (`r3+thinrows`), each variant three times in interleaved order, against PEFT in
# the same call. (1) the PEFT peer (both models, its matmul table); (2) matmul throughput and GPU µs per
# product at the 123M model's shapes for the default policy and the 'auto' one; (3) the 123M and ~10M
# forward + loss and LoRA step, parity with the cpu backend, profiles.
# Results in $DEST (default $OUT_20, else $OUT): peer.json, r5mm.md, r5.md, err.txt, results.jsonl.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r5.sh
set -uo pipefail
DEST="${DEST:-${OUT_20:-${OUT:?set OUT_20 or OUT to the folder for the results}}}"
mkdir -p "$DEST"
source .device/setup.sh
J=$(mktemp -d)
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; date -u; } > "$DEST/err.txt" 2>&1 || true
timeout 80 python3 packages/cli/bench/peer_train_gpu.py > "$DEST/peer.json" 2>> "$DEST/err.txt"
echo "peer exit $? $(date -u +%T)" >> "$DEST/err.txt"
export PEER="$DEST/peer.json"
LORA_GPU_TAG=r5mm LORA_GPU_MODELS=none LORA_GPU_PARITY=0 LORA_GPU_MATMUL=model LORA_GPU_MM_FLOPS=1e12 \
  LORA_GPU_MM_PROGRAMS="${MM_PROGRAMS:-r3 policy+thinrows,auto policy+thinrows,k32 policy+thinrows}" \
  OUT="$J" timeout 60 "$NODE" .device/bundle/train-gpu-r5.mjs > "$DEST/r5mm.md" 2>> "$DEST/err.txt"
echo "r5mm exit $? $(date -u +%T)" >> "$DEST/err.txt"
V="r3+thinrows,r5-auto,r5-auto+warp"
LORA_GPU_TAG=r5 LORA_GPU_MODELS="${MODELS:-123m,10m}" LORA_GPU_MATMUL=0 LORA_GPU_RUNS=7 \
  LORA_GPU_VARIANTS="${VARIANTS:-$V,$V,$V}" \
  OUT="$J" timeout 150 "$NODE" .device/bundle/train-gpu-r5.mjs > "$DEST/r5.md" 2>> "$DEST/err.txt"
echo "r5 exit $? $(date -u +%T)" >> "$DEST/err.txt"
for f in "$J"/results-*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done > "$DEST/results.jsonl"
ls -la "$DEST"
