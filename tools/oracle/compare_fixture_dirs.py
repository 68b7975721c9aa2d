"""Compares fixtures a script wrote on another machine (e.g. the GPU machine, into $ORACLE_OUT) with
the committed ones: every .safetensors tensor and every .json file present in both directories.
Usage: python tools/oracle/compare_fixture_dirs.py <committed dir> <regenerated dir> [tolerance]
Prints one line per file and exits 1 when a tensor differs by more than the relative tolerance
(default 1e-6; max |a - b| / max(max |a|, 1e-30)), shapes or names differ, or a JSON file differs
(version records such as "torch" or "transformers_version" aside)."""
import json
import os
import sys

import torch
from safetensors.torch import load_file

VERSION_KEYS = ("torch", "transformers", "transformers_version", "peft", "peft_version")
committed, fresh = sys.argv[1], sys.argv[2]
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-6
bad = 0
compared = 0
for dirpath, _, files in os.walk(fresh):
    for f in sorted(files):
        new = os.path.join(dirpath, f)
        old = os.path.join(committed, os.path.relpath(new, fresh))
        if not os.path.exists(old) or not (f.endswith(".safetensors") or f.endswith(".json")):
            continue
        compared += 1
        rel = os.path.relpath(new, fresh)
        if f.endswith(".json"):
            a, b = json.load(open(old)), json.load(open(new))
            if isinstance(a, dict) and isinstance(b, dict):
                for key in ("target_modules", "exclude_modules"):  # PEFT writes sets in hash order
                    for d in (a, b):
                        if isinstance(d.get(key), list):
                            d[key] = sorted(d[key])
                for key in VERSION_KEYS:  # which versions wrote a file is a record, not a result
                    a.pop(key, None)
                    b.pop(key, None)
            ok = a == b
            bad += not ok
            print(f"{'ok  ' if ok else 'DIFF'} {rel}")
            continue
        a, b = load_file(old), load_file(new)
        if sorted(a) != sorted(b):
            bad += 1
            print(f"DIFF {rel}: tensor names differ ({len(a)} vs {len(b)})")
            continue
        worst = 0.0
        for k in a:
            if a[k].shape != b[k].shape:
                bad += 1
                print(f"DIFF {rel}:{k} shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
                continue
            x, y = a[k].double(), b[k].double()
            scale = max(x.abs().max().item() if x.numel() else 0.0, 1e-30)
            worst = max(worst, ((x - y).abs().max().item() if x.numel() else 0.0) / scale)
        ok = worst <= tol
        bad += not ok
        print(f"{'ok  ' if ok else 'DIFF'} {rel}: {len(a)} tensors, max relative difference {worst:.1e}")
print(f"{compared} files compared, {bad} differ")
sys.exit(1 if bad else 0)
