"""PEFT 0.21 fixtures for combining adapters whose ΔW is large enough (min(out, in) >= 128) for @lora's
float32 backend path: the pruned svd types decompose ΔW to its top svd_rank triplets only (svdTruncated),
the svd type through the factors (svdOfLowRankSum).

Writes packages/core/__fixtures__/combine-large-{a,b}/ (two PEFT-saved adapters on a BigNet: Linear 192->256
and Linear 300->160) and combine-large-<label>/ (PEFT's combined adapter). svd_clamp's quantile depends on
the singular vectors' signs: for that combination torch.linalg.svd fixes them as svd_flip does (combine_net.py).
"""
import os
import sys

import peft
import torch
import torch.nn as nn
from peft import LoraConfig, get_peft_model

sys.path.insert(0, os.path.dirname(__file__))
from combine_net import fixed_svd_signs, save_adapter  # noqa: E402

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")


class BigNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(192, 256)
        self.down = nn.Linear(300, 160)


COMBOS = {
    "ties_svd": dict(combination_type="ties_svd", density=0.5, svd_rank=8),
    "magnitude_prune_svd": dict(combination_type="magnitude_prune_svd", density=0.3, svd_rank=6),
    "ties_svd_clamp": dict(combination_type="ties_svd", density=0.6, svd_rank=8, svd_clamp=0.95, majority_sign_method="frequency"),
    "svd": dict(combination_type="svd", svd_rank=12),
}


torch.manual_seed(0)
model = BigNet()
torch.manual_seed(80)
pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["up", "down"], init_lora_weights=False), adapter_name="a")
torch.manual_seed(81)
pm.add_adapter("b", LoraConfig(r=8, lora_alpha=8, use_rslora=True, target_modules=["up", "down"], init_lora_weights=False))
for name in ["a", "b"]:
    save_adapter(pm, name, os.path.join(OUT, f"combine-large-{name}"))
for label, kw in COMBOS.items():
    with fixed_svd_signs(kw):
        pm.add_weighted_adapter(["a", "b"], [0.7, 1.3], label, **kw)
    save_adapter(pm, label, os.path.join(OUT, f"combine-large-{label}"))
print("combine-large fixtures written with peft", peft.__version__, file=sys.stderr)
