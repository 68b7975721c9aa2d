#!/usr/bin/env bash
# Packs the EVA benchmark and the convergence experiment for the GPU machine, from the repository root:
# builds the packages, bundles bench/eva-bench.js and src/experiment.js as ../shared/device/pack does
# (esbuild, 'webgpu' external), and puts them with tfjs-backend-wasm's binaries, the PEFT peer script and
# device.sh into one folder (default .bench/eva-device/) that travels to the GPU machine beside a packed
# .device/ (../shared/device/pack: Node, Dawn's webgpu, the Vulkan loader).
#
#   bash examples/eva-init/bench/pack.sh [OUTDIR]
# On the GPU machine, from the repository root, with .device and OUTDIR carried:
#   bash OUTDIR/device.sh bench        # PEFT on CUDA, ours on webgpu and wasm, one table
#   bash OUTDIR/device.sh experiment   # EVA against the default init on fortune-llama, webgpu
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
out=${1:-.bench/eva-device}
npx turbo run build --filter=@lora-examples/eva-init... --output-logs=errors-only
mkdir -p "$out"
for entry in examples/eva-init/bench/eva-bench.js examples/eva-init/bench/eva-profile.js examples/eva-init/bench/ipca-kernels.js \
  examples/eva-init/src/experiment.js; do
  name=$(basename "${entry%.*}")
  [ "$name" = experiment ] && name=eva-experiment
  npx esbuild "$entry" --bundle --platform=node --format=esm --target=node20 \
    --external:webgpu --ignore-annotations --log-level=error --outfile="$out/$name.mjs" \
    --inject:examples/eva-init/bench/dirname-shim.js \
    --banner:js="import {createRequire as __lora_cr} from 'module'; const require = __lora_cr(import.meta.url);"
done
cp node_modules/@tensorflow/tfjs-backend-wasm/dist/*.wasm "$out/"
cp examples/eva-init/bench/peft_eva_bench.py examples/eva-init/bench/device.sh "$out/"
du -sh "$out" | sed 's/^/size: /'
ls "$out"
