#!/usr/bin/env bash
# Issue 13, session 9, on the GPU machine from the repo root, in one call (at most 150 s):
#  1. torch CUDA's float32 SVD (torch.linalg.svd, thin, median of 3 after a warm call) at 1024² and 2048², once;
#  2. ours on webgpu (bench/large-gpu.ts, BENCH_PEERS=0) at 1024² and 2048² with svd's defaults and each of the
#     Jacobi variants below (BENCH_JACOBI), interleaved: every variant once, then every variant again at 1024²;
#  3. 4096² once with the defaults and the fused, merged single-sweep variant, if its matrix is already in
#     packages/linalg/.bench/large (making it takes a float64 SVD of 4096²) and time is left.
# Each invocation is under `timeout` and skipped when the 150 s would not hold it.
# Needs .device/bundle/large-gpu.mjs built from this tree (`../shared/device/pack packages/linalg/bench/large-gpu.ts`). Writes "$OUT"/{torch.json,<round>-<variant>.{md,err},summary.md}.
set -uo pipefail
[ -n "${NODE:-}" ] || source .device/setup.sh
out=${OUT:-/tmp/out-s9}
mkdir -p "$out"
dir=packages/linalg/.bench/large
budget=150
left() { echo $((budget - SECONDS)); }

# variant name → BENCH_JACOBI ('' = svd's own call, i.e. today's defaults: block 16, innerSweeps 2, innerExit
# off, checkBelow 0; 'exit-check' = innerExit and checkBelow 0.01, which were the defaults in the 2026-12-03 19:19
# call, where this variant was named 'default' and today's defaults 'before'; the fused and i1 variants ran on
# those defaults there)
declare -A jacobi=(
  [default]=''
  [exit-check]='{"innerExit":true,"checkBelow":0.01}'
  [i1]='{"innerSweeps":1}'
  [fused]='{"fused":true}'
  [fused-merged]='{"fused":true,"mergedRounds":true}'
  [fused-i1]='{"fused":true,"innerSweeps":1}'
  [fused-i1-merged]='{"fused":true,"innerSweeps":1,"mergedRounds":true}'
)
order=(default exit-check i1 fused fused-merged fused-i1 fused-i1-merged)

timeout 40 python3 packages/linalg/bench/peers_large.py make "$dir" full_1024,full_2048 2> "$out/make.err"
timeout 30 python3 - "$dir" > "$out/torch.json" 2> "$out/torch.err" <<'PY'
import json, sys, time
import torch
from safetensors.numpy import load_file

out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
for case in ("full_1024", "full_2048"):
    a = torch.from_numpy(load_file(f"{sys.argv[1]}/{case}.safetensors")["a"]).cuda()
    torch.linalg.svd(a, full_matrices=False)
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        torch.linalg.svd(a, full_matrices=False)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    out[case] = sorted(times)[1]
print(json.dumps(out))
PY

# one of our invocations: ours ROUND VARIANT CASES RUNS LIMIT_S
ours() {
  local round=$1 name=$2 cases=$3 runs=$4 limit=$5
  local t=$(( $(left) - 3 ))
  [ "$t" -gt "$limit" ] && t=$limit
  if [ "$t" -lt 8 ]; then echo "skipped $round-$name ($(left) s left)" >> "$out/skipped.txt"; return; fi
  BENCH_CASES=$cases BENCH_PEERS=0 BENCH_RUNS=$runs BENCH_MAX_WAIT_MS=0 BENCH_CASE_LIMIT_S=8 BENCH_JACOBI=${jacobi[$name]} \
    timeout "$t" "$NODE" .device/bundle/large-gpu.mjs > "$out/$round-$name.md" 2> "$out/$round-$name.err"
  echo "exit $? after ${SECONDS} s" >> "$out/$round-$name.err"
}
for v in "${order[@]}"; do ours r1 "$v" full_1024,full_2048 3 25; done
for v in "${order[@]}"; do ours r2 "$v" full_1024 3 12; done
if [ -f "$dir/full_4096.safetensors" ]; then
  for v in default fused-i1-merged; do ours r3 "$v" full_4096 1 20; done
fi

# one table: the median wall time of each (round, variant, case), its notes, and the ratio to torch CUDA
python3 - "$out" > "$out/summary.md" <<'PY'
import glob, json, os, sys

d = sys.argv[1]
try:
    torch = json.load(open(os.path.join(d, "torch.json")))
except Exception:
    torch = {}
print(f"torch CUDA: {json.dumps(torch)}\n")
print("| round | variant | case | ours | torch CUDA | ours / torch | notes |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for err in sorted(glob.glob(os.path.join(d, "r*-*.err"))):
    round_, variant = os.path.basename(err)[:-4].split("-", 1)
    raw = [l for l in open(err) if l.startswith("raw: ")]
    if not raw:
        print(f"| {round_} | {variant} | – | – | – | – | no result: {open(err).read()[-200:].strip().splitlines()[-1:]} |")
        continue
    ours = json.loads(raw[-1][5:])["ours"]
    for case, row in ours.items():
        o = row["svd"]
        peer = torch.get(case)
        ratio = f"{o['ms'] / peer:.2f}×" if peer else "–"
        over = "> " if o.get("over") else ""
        print(f"| {round_} | {variant} | {case} | {over}{o['ms']:.0f} ms | {f'{peer:.0f} ms' if peer else '–'} | {ratio} | {o['note']} |")
PY
echo "done after ${SECONDS} s" >> "$out/summary.md"
