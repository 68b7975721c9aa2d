"""PEFT 0.21 fixture for several adapters active at once (LoraModel.set_adapter with a list): the two
PEFT-saved adapters of peft_fixtures.py (weighted-a, weighted-b) on its Net, both active; their output,
the trainable parameters PEFT marks, and the weights merge_and_unload gives. Writes
packages/core/__fixtures__/multi-active-expected.safetensors and multi-active.json."""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT  # noqa: E402

# the inputs are committed fixtures of peft_fixtures.py (read from the repository even when ORACLE_OUT points elsewhere)
FIX = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")
os.makedirs(OUT, exist_ok=True)
from peft_fixtures_net import Net  # noqa: E402

net = Net()
net.load_state_dict(load_file(os.path.join(FIX, "base.safetensors")))
x = load_file(os.path.join(FIX, "expected.safetensors"))["x"]
pm = PeftModel.from_pretrained(net.eval(), os.path.join(FIX, "weighted-a"), adapter_name="a", is_trainable=True)
pm.load_adapter(os.path.join(FIX, "weighted-b"), adapter_name="b", is_trainable=True)
pm.base_model.set_adapter(["a", "b"])
pm.eval()
out = {"x": x}
with torch.no_grad():
    out["both.out"] = pm(x)
trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
active = pm.active_adapters
merged = pm.merge_and_unload()
for k, v in merged.state_dict().items():
    if k in ("layers.0.q_proj.weight", "layers.1.mlp.weight", "layers.1.v_proj.weight"):
        out[f"both.merged.{k}"] = v.detach().clone()
save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "multi-active-expected.safetensors"))
with open(os.path.join(OUT, "multi-active.json"), "w") as f:
    json.dump({"active_adapters": active, "trainable": trainable}, f, indent=1)
print("multi-active fixtures written; active", active, len(trainable), "trainable tensors")
