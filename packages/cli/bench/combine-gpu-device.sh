#!/usr/bin/env bash
# The GPU-machine run of issue 13's 7B combine, in one device call (about 2 minutes): bench/combine-7b-gpu.ts
# (ours on webgpu over all 64 modules, then PEFT 0.21 on torch CUDA over the first PEER_LAYERS layers, in
# the same process run), then bench/combine-profile.ts on one module with the backend's TIES trim, phase
# by phase. Both bundled by `../shared/device/pack packages/cli/bench/combine-7b-gpu.ts
# packages/cli/bench/combine-profile.ts`. Everything lands in $OUT:
#   gpu.txt                        nvidia-smi's name of the GPU
#   combine.md, combine.err        the combine table (ours, PEFT, B·A against PEFT's), progress
#   profile.md, profile.err        one module's phases on webgpu
# Run from the repository root:  bash packages/cli/bench/combine-gpu-device.sh
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true

PEER_LAYERS="${PEER_LAYERS:-4}" BENCH_MAX_WAIT_MS=5000 LORA_ROOT="$PWD" \
  timeout 170 "$NODE" .device/bundle/combine-7b-gpu.mjs > "$OUT/combine.md" 2> "$OUT/combine.err"
echo "combine exit $?" >> "$OUT/combine.err"

LORA_BACKEND=webgpu PRUNE=tensor COMBINE_DIR="$PWD/packages/cli/.bench/combine-7b" \
  timeout 50 "$NODE" .device/bundle/combine-profile.mjs > "$OUT/profile.md" 2> "$OUT/profile.err"
echo "profile exit $?" >> "$OUT/profile.err"
ls -la "$OUT"
