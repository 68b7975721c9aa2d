#!/usr/bin/env bash
# Issue 20 round 4, second call (about 2.5 minutes): the tiled matmul's variations that the first call
# (train-gpu-device-r4.sh) left in question, each measured twice, against PEFT in the same call (see
# train-gpu-device-round.sh for the steps). Results in $DEST (default $OUT_20, else $OUT): peer.json,
# r4bmm.md, r4b.md, err.txt, results.jsonl.
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r4b.sh
V="r3,r3+thinrows,r4-k32,r4-k32+thinrows,r4-warp+k32+thinrows,r4-all"
ROUND=r4b MM_LIMIT=90 VARIANTS_LIMIT=120 \
  MM_PROGRAMS="${MM_PROGRAMS:-tiled-128,128+k32,128+warp,128+warp+k32,128+double,128+warp+double,128+all,128+all+k32,r3 policy,r3 policy+thinrows,k32 policy+thinrows,64+all+split,r4 policy+split+thin}" \
  VARIANTS="${VARIANTS:-$V,$V}" exec bash "$(dirname "$0")/train-gpu-device-round.sh"
