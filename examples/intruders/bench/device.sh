#!/usr/bin/env bash
# The GPU-machine run of issue 18, in one device call: PEFT 0.21's reduce_intruder_dimension on CUDA
# (peer_intruders.py, which also writes the base and adapter files), then ours on webgpu on the same
# files (intruders-bench.js bundled into .device/bundle/intruders-bench.mjs), on the 123M Llama shape
# (hidden 1024, intermediate 2816, 16 / 4 heads, vocab 32000), r 16 on all seven targets.
#   part A  LAYERS_A decoder layers (default 1), our bundle as built from main's @lora/linalg
#   part B  LAYERS_B decoder layers (default 8), only if .device/bundle/intruders-bench-b.mjs is there:
#           the same entry bundled from another build (e.g. the commit before a change), for a
#           comparison in the same call
#   part C  (first) only if .device/bundle/intruders-experiment.mjs is there: the λ experiment
#           (experiment-device.js) on webgpu, writing c-lambda.json; needs examples/fortune-llama (on
#           main) and pretrain.heldout.txt beside this script (from examples/intruders/data/)
# Each part has its own time limits, so that one that runs long leaves the others' results. In $OUT:
#   {a,b}-bench.md (the tables), intruders.tgz (gpu.txt, {a,b}-peer.json, {a,b}-peer.err, {a,b}-bench.err
#   with per-layer progress, {a,b}-bench-123m.json)
# NODE_FLAGS go to node for our side (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof": NODE_OPTIONS refuses --cpu-prof).
# Run from the repository root:  bash examples/intruders/bench/device.sh  (or from a copy of this
# folder: it finds peer_intruders.py beside itself)
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
source .device/setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
HERE=$(dirname "$0")
part() { # tag layers bundle peer-limit ours-limit
  local D; D=$(mktemp -d)
  timeout "$4" python3 "$HERE/peer_intruders.py" --model 123m --layers "$2" --runs 2 --dir "$D" --device cuda ${PEER_ARGS:-} \
    > "$OUT/$1-peer.json" 2> "$OUT/$1-peer.err"
  echo "peer exit $?" >> "$OUT/$1-peer.err"
  mkdir -p "$OUT/$1"
  OUT="$OUT/$1" LORA_BACKEND=webgpu timeout "$5" "$NODE" ${NODE_FLAGS:-} ".device/bundle/$3.mjs" "$D" > "$OUT/$1-bench.md" 2> "$OUT/$1-bench.err"
  echo "bench exit $?" >> "$OUT/$1-bench.err"
  mv "$OUT/$1"/* "$OUT/" 2>/dev/null; rmdir "$OUT/$1" 2>/dev/null
  for f in "$OUT"/bench-123m.json; do [ -e "$f" ] && mv "$f" "$OUT/$1-bench-123m.json"; done
  rm -rf "$D"
}
if [ -e .device/bundle/intruders-experiment.mjs ]; then
  OUT="$OUT" PRETRAIN_FILE="$HERE/pretrain.heldout.txt" EPSILONS="${EPSILONS:-0.5,0.9}" LORA_BACKEND=webgpu timeout "${LIMIT_C:-150}" \
    "$NODE" .device/bundle/intruders-experiment.mjs > "$OUT/c-experiment.log" 2>&1
  echo "experiment exit $?" >> "$OUT/c-experiment.log"
  [ -e "$OUT/lambda.json" ] && mv "$OUT/lambda.json" "$OUT/c-lambda.json"
fi
[ -e .device/bundle/intruders-bench.mjs ] && part a "${LAYERS_A:-1}" intruders-bench "${PEER_LIMIT_A:-60}" "${LIMIT_A:-130}"
[ -e .device/bundle/intruders-bench-b.mjs ] && part b "${LAYERS_B:-8}" intruders-bench-b "${PEER_LIMIT_B:-90}" "${LIMIT_B:-140}"
# the two tables stay readable; everything else goes into one archive (the call returns at most 8 files)
ls -la "$OUT"
(cd "$OUT" && tar czf intruders.tgz --remove-files $(ls | grep -v -e '-bench.md$' -e '^c-lambda.json$'))
