#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see pack.sh): `bash DIR/device.sh bench|experiment`,
# DIR being the folder pack.sh wrote, .device/ (../shared/device/pack) carried too. Writes into $OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source .device/setup.sh
# the bundles import 'webgpu', which resolves from .device/bundle/ (its node_modules is .device/node_modules)
cp "$here"/*.mjs "$here"/*.wasm .device/bundle/
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/eva-out}
mkdir -p "$out"
case "${1:-bench}" in
  bench)
    # the 123M Llama and 8 batches of 4x512, made here (too large to carry); then PEFT, then ours, on the
    # same first EVA_BENCH_STEPS batches (default 80: ten passes, where ours stops by default; PEFT never
    # converged on this random model: 427 batches in 100 s on 2026-12-02)
    export EVA_BENCH_STEPS=${EVA_BENCH_STEPS:-80}
    d=/tmp/eva-bench
    python3 "$here/peft_eva_bench.py" make $d 2>&1 | grep -v '%|' | tail -2
    PEFT_TIME_LIMIT=${PEFT_TIME_LIMIT:-60} timeout 90 python3 "$here/peft_eva_bench.py" run $d 2>&1 | grep -v '%|' | tail -3
    timeout 100 $NODE .device/bundle/eva-bench.mjs $d --backend webgpu --time-limit 80 2> "$out/ours-webgpu.log"; echo "webgpu rc=$?"
    tail -3 "$out/ours-webgpu.log"
    # the previous path (q×q factorisations on the host, a read-back per CholeskyQR pass), 10 batches
    if [ -n "${EVA_BENCH_HOST:-}" ]; then
      timeout 40 $NODE .device/bundle/eva-bench.mjs $d --backend webgpu --max-steps 10 --time-limit 20 --factor host \
        2> "$out/ours-webgpu-host.log"; echo "webgpu host path rc=$?"
    fi
    # the PCA update alone at these shapes, kernel by kernel (GPU timestamps)
    timeout 45 $NODE .device/bundle/ipca-kernels.mjs --steps 3 --modes backend > "$out/ipca-kernels.md" 2> "$out/ipca-kernels.log"
    echo "ipca-kernels rc=$?"; cat "$out/ipca-kernels.md"
    # where a batch goes on webgpu: read-backs, kernels and CPU seconds per phase, 3 batches
    timeout 45 $NODE .device/bundle/eva-profile.mjs $d --backend webgpu --steps 3 > "$out/profile-webgpu.md" 2> "$out/profile-webgpu.log"
    echo "profile rc=$?"; cat "$out/profile-webgpu.md"
    if [ -n "${EVA_BENCH_WASM:-}" ]; then
      timeout 120 $NODE .device/bundle/eva-bench.mjs $d --backend wasm --time-limit 50 2> "$out/ours-wasm.log"; echo "wasm rc=$?"
      tail -3 "$out/ours-wasm.log"
    fi
    python3 "$here/peft_eva_bench.py" table $d | tee "$out/eva-bench.md"
    cp $d/peft.json $d/ours-*.json $d/settings.json "$out/" 2>/dev/null
    ;;
  experiment)
    # EVA against the default init on fortune-llama (examples/fortune-llama, in the repository)
    LORA_BACKEND=${LORA_BACKEND:-webgpu} EVA_RESULTS="$out" FORTUNE_LLAMA_DIR=examples/fortune-llama/model \
      FORTUNE_LLAMA_DATA=examples/fortune-llama/data timeout 480 $NODE .device/bundle/eva-experiment.mjs 2>&1 |
      tee "$out/experiment.log" | grep -v '^\s*$' | tail -20
    ;;
  *) echo "usage: device.sh bench|experiment" >&2; exit 2 ;;
esac
