"""Runs `lora combine` on the PEFT-saved combine fixtures (packages/core/__fixtures__/combine-{a,b,c}),
loads each output into PEFT 0.21 with PeftModel.from_pretrained, and compares the model's output with
PEFT's own add_weighted_adapter of the same adapters (computed here, in the same process). Also tries
PeftModel.from_pretrained on PEFT's own saved combination where PEFT kept a narrower rank than its config
says (rank patterns with `linear`), and reports what happens. Exit status 0 when every output agrees
(1e-5 relative; 1e-4 through an SVD).

Build the CLI first (npx turbo run build --filter=@lora/cli...), then:
  .venv-oracle/bin/python tools/oracle/check_peft_loads_combined.py [lora command, default: node packages/cli/dist/bin.js]
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from combine_net import COMBOS, CombineNet, allow_conv1d_svd, fixed_svd_signs  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIX = os.path.join(ROOT, "packages", "core", "__fixtures__")
LORA = shlex.split(sys.argv[1]) if len(sys.argv) > 1 else ["node", os.path.join(ROOT, "packages", "cli", "dist", "bin.js")]
OPTION = {"combination_type": "--type", "svd_rank": "--svd-rank", "svd_clamp": "--svd-clamp", "density": "--density", "majority_sign_method": "--majority-sign"}

allow_conv1d_svd()  # PEFT 0.21 fails on Conv1d with the SVD types (huggingface/peft#3769)
fixture = load_file(os.path.join(FIX, "combine-base.safetensors"))
base_sd = {k[5:]: v for k, v in fixture.items() if k.startswith("base.")}
ids, img = fixture["ids"].long(), fixture["img"]


def base():
    net = CombineNet()
    net.load_state_dict(base_sd)
    return net.eval()


# PEFT's own combinations, in memory
peft_model = None
for name in ["a", "b", "c"]:
    path = os.path.join(FIX, f"combine-{name}")
    if peft_model is None:
        peft_model = PeftModel.from_pretrained(base(), path, adapter_name=name)
    else:
        peft_model.load_adapter(path, adapter_name=name)
peft_model.eval()

work = tempfile.mkdtemp(prefix="lora-combine-check-")
failed = []
try:
    for label, (adapters, weights, kw) in COMBOS.items():
        with fixed_svd_signs(kw):
            peft_model.add_weighted_adapter(adapters, weights, label, **kw)
        peft_model.set_adapter(label)
        with torch.no_grad():
            theirs = peft_model(ids, img)
        out = os.path.join(work, label)
        args = [a for name in adapters for a in ("--adapter", os.path.join(FIX, f"combine-{name}"))]
        args += [f"--weights={','.join(str(w) for w in weights)}", "--out", out]
        args += [a for k, v in kw.items() for a in (OPTION[k], str(v))]
        run = subprocess.run([*LORA, "combine", *args], capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{label}: lora combine failed: {run.stderr.strip().splitlines()[-1]}")
            failed.append(label)
            continue
        ours = PeftModel.from_pretrained(base(), out).eval()
        with torch.no_grad():
            y = ours(ids, img)
        err = ((y - theirs).abs().max() / theirs.abs().max()).item()
        tol = 1e-4 if kw["combination_type"].endswith("svd") and len(adapters) > 1 else 1e-5
        print(f"{label:22s} PEFT loaded `lora combine`'s adapter: max relative difference from PEFT's own combination {err:.2e}")
        if not err < tol:
            failed.append(label)

    # PEFT's own save of a `linear` combination whose adapters have rank patterns
    saved = os.path.join(work, "peft-linear")
    peft_model.save_pretrained(saved, selected_adapters=["linear"])
    try:
        PeftModel.from_pretrained(base(), os.path.join(saved, "linear"))
        print("PEFT's own saved `linear` combination loads")
    except RuntimeError as e:
        print(f"PEFT's own saved `linear` combination does not load in PEFT: {str(e).splitlines()[0]} {str(e).splitlines()[1].strip()}")
finally:
    shutil.rmtree(work, ignore_errors=True)
print("all agree" if not failed else f"FAILED: {', '.join(failed)}")
sys.exit(1 if failed else 0)
