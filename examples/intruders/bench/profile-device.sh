#!/usr/bin/env bash
# A host profile of our side of intruder reduction on the GPU machine: PEFT's fixtures through webgpu
# (check-core-webgpu), then peer_intruders.py writes a base and adapter (LAYERS decoder layers of the 123M
# shape, default 2) and intruders-bench.mjs runs under node --cpu-prof; the profile comes back xz'd.
# Needs .device/bundle/{intruders-bench,check-core-webgpu}.mjs. Run from the repository root:
#   bash examples/intruders/bench/profile-device.sh    (results in $OUT)
set -uo pipefail
source .device/setup.sh
LORA_CORE_FIXTURES=packages/core/__fixtures__ timeout 60 "$NODE" .device/bundle/check-core-webgpu.mjs webgpu > "$OUT/check-core.txt" 2>&1; echo "check exit $?" >> "$OUT/check-core.txt"
D=$(mktemp -d)
timeout 60 python3 examples/intruders/bench/peer_intruders.py --model 123m --layers "${LAYERS:-2}" --runs 1 --dir "$D" --device cuda > "$OUT/peer.json" 2> "$OUT/peer.err"; echo "peer exit $?" >> "$OUT/peer.err"
mkdir -p /tmp/prof
LORA_BACKEND=webgpu timeout 120 "$NODE" --cpu-prof --cpu-prof-dir=/tmp/prof .device/bundle/intruders-bench.mjs "$D" > "$OUT/bench.md" 2> "$OUT/bench.err"; echo "bench exit $?" >> "$OUT/bench.err"
ls -la /tmp/prof; for f in /tmp/prof/*.cpuprofile; do xz -T4 -c "$f" > "$OUT/intruders.cpuprofile.xz"; done
ls -la $OUT
