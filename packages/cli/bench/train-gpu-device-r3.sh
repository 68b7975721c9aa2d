#!/usr/bin/env bash
# Issue 20 round 3 on the GPU machine, in one device call (under 4 minutes): the PEFT peer, then
# bench/train-gpu.ts (bundled into .device/bundle/train-gpu.mjs by ../shared/device/pack) on the 123M
# and ~10M Llamas with the variants that matter now: round 2's defaults (fused+cache), + tiled matmul,
# + LoRA's fused low-rank add (addLowRank, tfjs matmul), and today's defaults (tiled matmul by shape,
# LoRA Linears through linearLowRank: base product and low-rank term in one dispatch), and the same
# with 64² tiles below 256 workgroups of 128² (default+wide64). Prints, per
# variant, forward / step ms against PEFT, dispatches, host and process CPU time per step, the step's
# top kernels by GPU time and the forward's kernel list; parity with the cpu backend on a tiny Llama;
# then float32 TFLOP/s of the 123M model's products for tfjs's program and the 64² / 128² tiles (which
# tile chooseTile should take where: the peer times the same products).
# Each part has its own time limit, so that one that hangs leaves the others' results. In $OUT:
#   gpu.txt                       nvidia-smi
#   peer.json, peer.err           PEFT 0.21 / PyTorch CUDA (fp32, TF32 off)
#   r3.md, r3.err, results-r3.json   ours: the tables (r3.md), progress, everything as JSON
# Run from the repository root:  bash packages/cli/bench/train-gpu-device-r3.sh
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true

timeout 80 python3 packages/cli/bench/peer_train_gpu.py > "$OUT/peer.json" 2> "$OUT/peer.err"
echo "peer exit $?" >> "$OUT/peer.err"

LORA_GPU_TAG=r3 LORA_GPU_VARIANTS="${LORA_GPU_VARIANTS:-fused+cache,fused+cache+tiled,fused+cache+lora,default,default+wide64}" \
  LORA_GPU_MATMUL="${LORA_GPU_MATMUL:-model}" timeout 160 "$NODE" .device/bundle/train-gpu.mjs > "$OUT/r3.md" 2> "$OUT/r3.err"
echo "ours exit $?" >> "$OUT/r3.err"
ls -la "$OUT"
