#!/usr/bin/env bash
# Issue 20 round 4, first call (about 2.5 minutes): the tiled matmul's round-4 variations on the H200
# against PyTorch fp32 (TF32 off) and PEFT in the same call. (1) the PEFT peer (both models, its matmul
# table); (2) matmul throughput at the 123M model's shapes for each program of train-gpu.ts's MM_PROGRAMS
# (no models); (3) the 123M and ~10M forward + loss and LoRA step for round 3's program and round 4's
# variants, parity with the cpu backend; (4) a short matmul table with Dawn's robustness off (a probe of
# what bounds clamping costs; LORA_R4_PROBE=0 skips it).
# Results in $DEST (default $OUT_20, else $OUT): peer.json, r4mm.md, r4.md, r4nr.md, err.txt, results.jsonl.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r4.sh
set -uo pipefail
DEST="${DEST:-${OUT_20:-${OUT:?set OUT_20 or OUT to the folder for the results}}}"
source .device/setup.sh
ROUND=r4 MM_LIMIT=80 VARIANTS_LIMIT=100 RUNS=5 DEST="$DEST" \
  MM_PROGRAMS="${MM_PROGRAMS:-tiled-64,tiled-128,128+warp,128+double,128+v4out,128+all,128+all+k32,128x64+all,64+all+split,r3 policy,r4 policy,r4 policy+split,r4 policy+split+thin}" \
  VARIANTS="${VARIANTS:-r3,r4-all,r4-all+medium,r4-all+medium+split,r4-all+medium+split+thin,r4-all+medium+k32}" \
  bash "$(dirname "$0")/train-gpu-device-round.sh"
J=$(mktemp -d)
if [ "${LORA_R4_PROBE:-1}" != 0 ]; then
  LORA_DAWN_OPTIONS="enable-dawn-features=disable_robustness" LORA_GPU_TAG=r4nr LORA_GPU_MODELS=none LORA_GPU_PARITY=0 \
    LORA_GPU_MATMUL=model LORA_GPU_MM_FLOPS=1e12 LORA_GPU_MM_PROGRAMS="tiled-128,128+all,r4 policy" \
    OUT="$J" timeout 30 "$NODE" .device/bundle/train-gpu-r4.mjs > "$DEST/r4nr.md" 2>> "$DEST/err.txt"
  echo "r4nr exit $? $(date -u +%T)" >> "$DEST/err.txt"
fi
for f in "$J"/results-*.json; do [ -f "$f" ] && { cat "$f"; echo; }; done >> "$DEST/results.jsonl"
ls -la "$DEST"
