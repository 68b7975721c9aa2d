#!/usr/bin/env bash
# One round of issue 20's GPU measurements (the round scripts call this with their lists):
# (1) the PEFT peer (both models, its matmul table); (2) matmul throughput and GPU µs per product at the
# 123M model's shapes for each program of MM_PROGRAMS; (3) the 123M and ~10M forward + loss and LoRA step
# for each variant of VARIANTS (in that order), parity with the cpu backend, profiles.
# ROUND names the bundle (.device/bundle/train-gpu-$ROUND.mjs) and the outputs: $DEST/peer.json,
# ${ROUND}mm.md, $ROUND.md, err.txt, results.jsonl ($DEST defaults to $OUT_20, else $OUT).
# MM_LIMIT and VARIANTS_LIMIT are the two node runs' time limits (s). Run from the repository root.
set -uo pipefail
: "${ROUND:?set ROUND (e.g. r5)}" "${MM_PROGRAMS:?set MM_PROGRAMS}" "${VARIANTS:?set VARIANTS}"
DEST="${DEST:-${OUT_20:-${OUT:?set OUT_20 or OUT to the folder for the results}}}"
mkdir -p "$DEST"
[ -n "${NODE:-}" ] || source .device/setup.sh
J=$(mktemp -d)
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; date -u; } > "$DEST/err.txt" 2>&1 || true
timeout 80 python3 packages/cli/bench/peer_train_gpu.py > "$DEST/peer.json" 2>> "$DEST/err.txt"
echo "peer exit $? $(date -u +%T)" >> "$DEST/err.txt"
export PEER="$DEST/peer.json"
LORA_GPU_TAG=${ROUND}mm LORA_GPU_MODELS=none LORA_GPU_PARITY=0 LORA_GPU_MATMUL=model LORA_GPU_MM_FLOPS=1e12 \
  LORA_GPU_MM_PROGRAMS="$MM_PROGRAMS" \
  OUT="$J" timeout "${MM_LIMIT:-90}" "$NODE" ".device/bundle/train-gpu-$ROUND.mjs" > "$DEST/${ROUND}mm.md" 2>> "$DEST/err.txt"
echo "${ROUND}mm exit $? $(date -u +%T)" >> "$DEST/err.txt"
LORA_GPU_TAG=$ROUND LORA_GPU_MODELS="${MODELS:-123m,10m}" LORA_GPU_MATMUL=0 LORA_GPU_RUNS="${RUNS:-7}" \
  LORA_GPU_VARIANTS="$VARIANTS" \
  OUT="$J" timeout "${VARIANTS_LIMIT:-120}" "$NODE" ".device/bundle/train-gpu-$ROUND.mjs" > "$DEST/$ROUND.md" 2>> "$DEST/err.txt"
echo "$ROUND exit $? $(date -u +%T)" >> "$DEST/err.txt"
for f in "$J"/results-*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done > "$DEST/results.jsonl"
ls -la "$DEST"
