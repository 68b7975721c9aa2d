#!/usr/bin/env bash
# The GPU-machine run of issue 20, in one device call (about 5 minutes): the PEFT peer, then
# bench/train-gpu.ts (bundled into .device/bundle/train-gpu.mjs by ../shared/device/pack) with
# Dawn's default toggles, then again on the 123M model with Dawn's validation and robustness checks
# off (what those cost us). Each part has its own time limit, so that a part that hangs leaves the
# others' results. Everything lands in $OUT:
#   peer.json, peer.err                      PEFT 0.21 / PyTorch CUDA: the two models, matmul TFLOP/s
#   default.md, default.err, results-default.json   ours, every variant, parity, profiles, matmul table
#   unsafe.md, unsafe.err, results-unsafe.json      ours, 123M, fused variants, Dawn toggles off
# Run from the repository root:  bash packages/cli/bench/train-gpu-device.sh
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true

timeout 150 python3 packages/cli/bench/peer_train_gpu.py > "$OUT/peer.json" 2> "$OUT/peer.err"
echo "peer exit $?" >> "$OUT/peer.err"

LORA_GPU_TAG=default timeout 300 "$NODE" .device/bundle/train-gpu.mjs > "$OUT/default.md" 2> "$OUT/default.err"
echo "default exit $?" >> "$OUT/default.err"

LORA_GPU_TAG=unsafe LORA_GPU_MODELS=123m LORA_GPU_VARIANTS=fused+cache,fused+cache+tiled LORA_GPU_PARITY=0 \
  LORA_GPU_MATMUL=squares LORA_DAWN_OPTIONS="enable-dawn-features=skip_validation,disable_robustness,disable_workgroup_init" \
  timeout 110 "$NODE" .device/bundle/train-gpu.mjs > "$OUT/unsafe.md" 2> "$OUT/unsafe.err"
echo "unsafe exit $?" >> "$OUT/unsafe.err"
ls -la "$OUT"
