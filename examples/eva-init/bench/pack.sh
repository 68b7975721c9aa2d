#!/usr/bin/env bash
# Packs the EVA benchmark for the GPU machine (run from the repository root): builds the packages, bundles
# eva-bench.js with /work/shared/device/pack (or $LORA_DEVICE_PACK), and puts tfjs-backend-wasm's binaries
# beside the bundle, where the wasm backend looks for them in a bundle.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
npx turbo run build --filter=@lora-examples/eva-init... --output-logs=errors-only
pack=${LORA_DEVICE_PACK:-/work/shared/device/pack}
if [ -f .git ]; then
  # a git worktree (.git is a file): the pack script's .git/info/exclude line cannot run; .device/ is in .gitignore
  tmp=$(mktemp -d)
  cp "$(dirname "$pack")/setup.sh" "$tmp/"
  grep -v 'info/exclude' "$pack" > "$tmp/pack"
  chmod +x "$tmp/pack"
  pack=$tmp/pack
fi
"$pack" examples/eva-init/bench/eva-bench.js
cp node_modules/@tensorflow/tfjs-backend-wasm/dist/*.wasm .device/bundle/
du -sh .device | sed 's/^/carry size: /'
