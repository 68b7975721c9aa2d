#!/usr/bin/env bash
# Issue 20 round 5 (about 4 minutes): the slab depth by K (`matmulDepth: 'auto'`, 32-deep from K = 2048 on)
# against the default before it (`r3+thinrows`), each variant three times in interleaved order, against PEFT
# in the same call; matmul tables for the default policy, the 'auto' one and 32-deep everywhere.
# Results in $DEST (default $OUT_20, else $OUT): peer.json, r5mm.md, r5.md, err.txt, results.jsonl.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r5.sh
V="r3+thinrows,r5-auto,r5-auto+warp"
ROUND=r5 MM_LIMIT=60 VARIANTS_LIMIT=150 \
  MM_PROGRAMS="${MM_PROGRAMS:-r3 policy+thinrows,auto policy+thinrows,k32 policy+thinrows}" \
  VARIANTS="${VARIANTS:-$V,$V,$V}" exec bash "$(dirname "$0")/train-gpu-device-round.sh"
