#!/usr/bin/env bash
# Regenerates every fixture with this machine's Python (e.g. the GPU machine: torch 2.11, peft 0.21.0)
# into $1 (default: a temporary directory) and compares each with the committed fixtures.
# Usage: bash tools/oracle/regenerate_and_compare.sh [out dir] [python]
set -u
cd "$(dirname "$0")/../.."
OUTDIR=${1:-$(mktemp -d)}
PY=${2:-python3}
status=0
run() { # script package
  local dir="$OUTDIR/$2"
  mkdir -p "$dir"
  echo "== $1 -> $dir"
  if ORACLE_OUT="$dir" "$PY" "tools/oracle/$1" > "$OUTDIR/${1%.py}.log" 2>&1; then
    "$PY" tools/oracle/compare_fixture_dirs.py "packages/$2/__fixtures__" "$dir" 1e-6 | tail -n 40 || status=1
  else
    echo "FAILED to run $1:"; tail -n 20 "$OUTDIR/${1%.py}.log"; status=1
  fi
}
run safetensors_fixtures.py tensor
run linalg_fixtures.py linalg
run nn_fixtures.py nn
run llama_fixtures.py models
for s in peft_fixtures.py fifo_fixtures.py convdora_fixtures.py combine_fixtures.py tokens_fixtures.py multi_active_fixtures.py; do run "$s" core; done
exit $status
