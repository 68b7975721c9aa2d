#!/usr/bin/env bash
# The CPU benchmark here, in one run: PEFT 0.21 on PyTorch CPU, then ours (LORA_BACKEND, default cpu)
# on the same files, fortune-llama with a random r 16 adapter on all seven targets (see
# peer_intruders.py). PYTHON: the oracle venv's python (default the repository's .venv-oracle/bin/python,
# or python3); THREADS: torch's CPU threads (default 1, as our side has one). Prints the table of
# intruders-bench.js.
#   bash examples/intruders/bench/run-cpu.sh [work dir]
set -euo pipefail
HERE=$(dirname "$0")
D=${1:-$(mktemp -d)}
PY=${PYTHON:-$(git rev-parse --show-toplevel)/.venv-oracle/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" "$HERE/peer_intruders.py" --model fortune --dir "$D" --device cpu --runs "${RUNS:-2}" --threads "${THREADS:-1}" > /dev/null
LORA_BACKEND=${LORA_BACKEND:-cpu} node "$HERE/intruders-bench.js" "$D"
