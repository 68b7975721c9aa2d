"""Loads an adapter written by @lora/core into PEFT 0.21 on the fixture Net and prints PEFT's output
on the fixture input, with the output @lora computed for the same adapter (written next to it by the
test as lora-output.json). Exit status 0 when they agree to 1e-5 relative.
Usage: python tools/oracle/check_peft_loads_ours.py <adapter dir written by @lora/core>"""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from peft_fixtures_net import Net  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")
adapter = sys.argv[1]
net = Net()
net.load_state_dict(load_file(os.path.join(FIX, "base.safetensors")))
model = PeftModel.from_pretrained(net, adapter).eval()
x = load_file(os.path.join(FIX, "expected.safetensors"))["x"]
with torch.no_grad():
    theirs = model(x)
ours = torch.tensor(json.load(open(os.path.join(adapter, "lora-output.json"))))
err = (theirs - ours).abs().max() / theirs.abs().max()
print(f"PEFT loaded {adapter}: max relative difference from @lora's output {err:.2e}")
sys.exit(0 if err < 1e-5 else 1)
