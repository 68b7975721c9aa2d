"""Loads a fan_in_fan_out adapter written by @lora/core (on the GPT-2-like net of fifo_fixtures.py) into
PEFT 0.21 and compares PEFT's output on the fixture input with the output @lora computed for it (written
next to it by packages/core/src/fan-in-fan-out.test.ts as lora-output.json). Exit status 0 when they
agree to 1e-5 relative.
Usage: LORA_KEEP_FIFO_ADAPTER=<dir> npx vitest run src/fan-in-fan-out.test.ts   (in packages/core)
       python tools/oracle/check_fifo_loads_ours.py <dir>"""
import json
import os
import sys
import warnings

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from fifo_fixtures_net import GptNet  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")


def net():
    m = GptNet()
    m.load_state_dict(load_file(os.path.join(FIX, "fifo-base.safetensors")))
    return m.eval()


adapter = sys.argv[1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(net(), adapter).eval()
said = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
x = load_file(os.path.join(FIX, "fifo-expected.safetensors"))["x"]
with torch.no_grad():
    theirs = model(x)
ours = torch.tensor(json.load(open(os.path.join(adapter, "lora-output.json"))))
err = (theirs - ours).abs().max() / theirs.abs().max()
layers = {n: m.fan_in_fan_out for n, m in model.named_modules() if hasattr(m, "fan_in_fan_out") and hasattr(m, "lora_A")}
print(f"PEFT loaded {adapter} (warnings: {said}; fan_in_fan_out per layer: {layers})")
print(f"max relative difference from @lora's output {err:.2e}")
sys.exit(0 if err < 1e-5 else 1)
