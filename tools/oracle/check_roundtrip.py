"""Loads adapters made by @lora/core into PEFT 0.21 and compares PEFT's outputs with ours.

The adapters come from packages/core/src/peft-roundtrip.test.ts:
    LORA_ROUNDTRIP_DIR=/tmp/rt npx vitest run src/peft-roundtrip.test.ts   (in packages/core)
    python tools/oracle/check_roundtrip.py /tmp/rt
Each case directory holds base.safetensors (the base model's weights), the adapters in PEFT's layout
(default at the root, others in sub-folders), io.safetensors (input x, our output y.<adapter>) and the
index.json at the top names the model class and adapters. Exit status 0 when every output agrees to
1e-5 relative (max |theirs - ours| / max |theirs|)."""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import peft_fixtures_net  # noqa: E402

root = sys.argv[1]
failed = 0
for case in json.load(open(os.path.join(root, "index.json"))):
    d = os.path.join(root, case["name"])
    io = load_file(os.path.join(d, "io.safetensors"))
    model_cls = getattr(peft_fixtures_net, case["model"])
    for name in case["adapters"]:
        base = model_cls()
        base.load_state_dict(load_file(os.path.join(d, "base.safetensors")))
        path = d if name == "default" else os.path.join(d, name)
        model = PeftModel.from_pretrained(base.eval(), path).eval()
        x = io["x"]
        if not torch.is_floating_point(x):
            x = x.long()
        with torch.no_grad():
            theirs = model(x)
        ours = io[f"y.{name}"]
        err = ((theirs - ours).abs().max() / theirs.abs().max()).item()
        ok = err < 1e-5
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {case['name']}/{name}: PEFT's output vs @lora's, max relative difference {err:.2e}")
print(f"{failed} failed" if failed else "all adapters made by @lora load in PEFT and give @lora's outputs")
sys.exit(1 if failed else 0)
