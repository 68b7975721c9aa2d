#!/usr/bin/env bash
# The EVA benchmark on this machine's CPU (`npm run bench -w @lora-examples/eva-init`): PEFT 0.21 on torch
# CPU against ours on wasm, in the same run, on the same seeded checkpoint and batches — the small
# preset of peft_eva_bench.py (EVA_BENCH_SMALL: a 0.3M Llama, 8 batches of 4×64, r 8), since a 123M
# Llama's EVA takes PEFT far longer than a CI-kind machine should run (the GPU machine runs that one:
# device.sh). Both sides time the same first EVA_BENCH_STEPS batches (default 16: two passes), wall
# and CPU seconds (this machine is shared: CPU seconds are the steadier figure), one thread each (ours
# is single-threaded wasm; torch's threads spin on an oversubscribed machine). Needs PYTHON (default: the repository's .venv-oracle) with torch, transformers, peft 0.21.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
venv=$root/.venv-oracle/bin/python
[ -x "$venv" ] || venv=$(git -C "$here" worktree list --porcelain | awk '/^worktree /{print $2"/.venv-oracle/bin/python"; exit}')
py=${PYTHON:-$venv}
d=${EVA_BENCH_DIR:-$root/.bench/eva-cpu}
export EVA_BENCH_SMALL=1 PYTHONUNBUFFERED=1 PEFT_TIME_LIMIT=${PEFT_TIME_LIMIT:-1800} EVA_BENCH_STEPS=${EVA_BENCH_STEPS:-16} \
  PEFT_THREADS=${PEFT_THREADS:-1} OMP_NUM_THREADS=${PEFT_THREADS:-1}
rm -rf "$d"
echo "machine: $(nproc --all) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
"$py" "$here/peft_eva_bench.py" make "$d" 2>&1 | grep -v '%|'
"$py" "$here/peft_eva_bench.py" run "$d" 2>&1 | grep -v '%|'
node "$here/eva-bench.js" "$d" --backend wasm 2>/dev/null
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" "$here/peft_eva_bench.py" table "$d"
