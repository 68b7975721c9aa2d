"""Loads adapters written by @lora/core's trainable-token and conversion tests into PEFT 0.21 and compares
PEFT's output with the one @lora computed (written next to each adapter as lora-check.json:
{"model": "toknet" | "toknet-tied" | "net", "output": [...]}). Exit status 0 when all agree to 1e-5 relative.
Usage: LORA_KEEP_DIR=/tmp/ours npx vitest run src/trainable-tokens.test.ts src/weight-conversion.test.ts
       python tools/oracle/check_peft_loads_tokens.py /tmp/ours/*"""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from peft_fixtures_net import Net  # noqa: E402
from tokens_net import TokNet  # noqa: E402

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")
ok = True
for adapter in sys.argv[1:]:
    check = json.load(open(os.path.join(adapter, "lora-check.json")))
    if check["model"] == "net":
        base = Net()
        base.load_state_dict(load_file(os.path.join(FIX, "base.safetensors")))
        inputs = load_file(os.path.join(FIX, "expected.safetensors"))["x"]
    else:
        tied = check["model"] == "toknet-tied"
        base = TokNet(tied)
        base.load_state_dict(load_file(os.path.join(FIX, "tokens-tied-base.safetensors" if tied else "tokens-base.safetensors")), strict=False)
        inputs = load_file(os.path.join(FIX, "tokens-expected.safetensors"))["ids"].long()
    model = PeftModel.from_pretrained(base.eval(), adapter).eval()
    with torch.no_grad():
        theirs = model(inputs)
    ours = torch.tensor(check["output"]).reshape(theirs.shape)
    err = ((theirs - ours).abs().max() / theirs.abs().max()).item()
    print(f"PEFT loaded {adapter}: max relative difference from @lora's output {err:.2e}")
    ok = ok and err < 1e-5
sys.exit(0 if ok else 1)
