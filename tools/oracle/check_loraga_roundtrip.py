"""PEFT 0.21 loads the LoRA-GA adapters @lora/loraga saved: run
`LORA_LORAGA_ROUNDTRIP_DIR=/tmp/lga npx vitest run src/loraga.test.ts -t saving` in packages/loraga, then
`LORA_LORAGA_ROUNDTRIP_DIR=/tmp/lga python tools/oracle/check_loraga_roundtrip.py`. For each case: the plain
adapter on the residual base (LoRA-GA took s*B0*A0 out of it), and the converted rank-2r adapter
(path_initial_model_for_weight_conversion) on the original base, must give our trained model's output."""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from loraga_net import LoraGaNet  # noqa: E402

ROOT = os.environ["LORA_LORAGA_ROUNDTRIP_DIR"]
BASE = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "loraga", "__fixtures__", "net-base.safetensors")
worst = 0.0
cases = sorted(os.listdir(ROOT))
for case in cases:
    d = os.path.join(ROOT, case)
    want = load_file(os.path.join(d, "trained.safetensors"))
    x = want["x"].long()
    for label, weights, adapter in [("plain on the residual base", os.path.join(d, "residual.safetensors"), "plain"),
                                    ("converted on the original base", BASE, "lora")]:
        net = LoraGaNet()
        net.load_state_dict(load_file(weights))
        pm = PeftModel.from_pretrained(net, os.path.join(d, adapter)).eval()
        with torch.no_grad():
            out = pm(x)
        err = float((out - want["out"]).abs().max() / want["out"].abs().max())
        worst = max(worst, err)
        print(f"{case}: {label}: max relative difference {err:.2e}")
print(f"{len(cases)} cases, worst {worst:.2e}")
sys.exit(0 if cases and worst < 1e-5 else 1)
