"""PEFT 0.21 fixtures for combining adapters (`add_weighted_adapter`, `combineAdapters`, `lora combine`)
on Linear, Embedding, Conv2d (3x3 and 1x1) and Conv1d targets, plus a fan_in_fan_out (GPT-2 Conv1D) case.

Writes packages/core/__fixtures__/:
  combine-base.safetensors        the CombineNet's weights, its inputs (ids, img) and the base output
  combine-{a,b,c}/                three adapters saved by PEFT (rank/alpha patterns, rsLoRA, a subset of targets)
  combine-<label>/                PEFT's combined adapter for each deterministic combination (save_pretrained
                                  of that adapter alone, config included)
  combine-expected.safetensors    the model's output with each combined adapter active ("<label>.out")
  combine-fifo-{a,b}/, combine-fifo-<label>/   the same on a fan_in_fan_out Conv1D (factors only)

PEFT 0.21 cannot combine Conv1d LoRA layers with the SVD types: `_svd_generalized_task_arithmetic_weighted_adapter`
flattens the delta to 2-D only for Conv2d, so a Conv1d delta goes into a batched SVD and fails
(huggingface/peft#3769, open). Here PEFT takes Conv1d down its Conv2d path (flatten(start_dim=1), then U and Vh
reshaped into lora_B's and lora_A's shapes), which is the fix proposed upstream; everything else is PEFT as installed.
`svd_clamp` takes a quantile of the SVD factors' values, which depends on the signs of the singular vectors that
LAPACK leaves arbitrary (no rule reproduces them). For that combination only, torch.linalg.svd is wrapped to fix the
signs as sklearn's svd_flip does (largest |entry| of each column of U positive), the convention @lora uses.
DARE types draw torch.bernoulli masks that no other generator reproduces: they are not in the fixtures.
"""
import os
import sys

import peft
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from combine_net import ADAPTERS, COMBOS, CombineNet, FifoNet, allow_conv1d_svd, fixed_svd_signs, save_adapter  # noqa: E402

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")
os.makedirs(OUT, exist_ok=True)
allow_conv1d_svd()


torch.manual_seed(0)
base = CombineNet().eval()
base_sd = {k: v.clone().contiguous() for k, v in base.state_dict().items()}
g = torch.Generator().manual_seed(1)
ids = torch.randint(0, 12, (3, 4), generator=g)
img = torch.randn(3, 2, 4, 4, generator=g)
with torch.no_grad():
    tensors = {**{f"base.{k}": v for k, v in base_sd.items()}, "ids": ids.to(torch.int32), "img": img, "base_out": base(ids, img)}
save_file(tensors, os.path.join(OUT, "combine-base.safetensors"), metadata={"peft": peft.__version__, "torch": torch.__version__})

model = CombineNet()
model.load_state_dict(base_sd)
pm = None
for i, (name, kwargs) in enumerate(ADAPTERS.items()):
    torch.manual_seed(60 + i)
    if pm is None:
        pm = get_peft_model(model, LoraConfig(**kwargs), adapter_name=name)
    else:
        pm.add_adapter(name, LoraConfig(**kwargs))
    save_adapter(pm, name, os.path.join(OUT, f"combine-{name}"))
pm.eval()

expected = {}
for label, (adapters, weights, kw) in COMBOS.items():
    with fixed_svd_signs(kw):
        pm.add_weighted_adapter(adapters, weights, label, **kw)
    pm.set_adapter(label)
    with torch.no_grad():
        expected[f"{label}.out"] = pm(ids, img)
    save_adapter(pm, label, os.path.join(OUT, f"combine-{label}"))
save_file({k: v.contiguous().float() for k, v in expected.items()}, os.path.join(OUT, "combine-expected.safetensors"), metadata={"peft": peft.__version__})

# fan_in_fan_out: lora_A/B are stored as for a Linear; the SVD types transpose the delta and back
torch.manual_seed(70)
fifo = get_peft_model(FifoNet(), LoraConfig(r=2, lora_alpha=4, fan_in_fan_out=True, target_modules=["c_attn"], init_lora_weights=False), adapter_name="a")
torch.manual_seed(71)
fifo.add_adapter("b", LoraConfig(r=2, lora_alpha=2, use_rslora=True, fan_in_fan_out=True, target_modules=["c_attn"], init_lora_weights=False))
for name in ["a", "b"]:
    save_adapter(fifo, name, os.path.join(OUT, f"combine-fifo-{name}"))
for label, kw in {"svd": dict(combination_type="svd"), "linear": dict(combination_type="linear"), "ties_svd": dict(combination_type="ties_svd", density=0.5)}.items():
    fifo.add_weighted_adapter(["a", "b"], [0.6, 0.9], label, **kw)
    save_adapter(fifo, label, os.path.join(OUT, f"combine-fifo-{label}"))
print("combine fixtures written with peft", peft.__version__)
