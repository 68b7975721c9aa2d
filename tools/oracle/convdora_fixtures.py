"""PEFT 0.21 fixtures for DoRA on Embedding / Conv1d / Conv2d and for LoRA on grouped convolutions
(@lora/core's src/dora-conv-embedding.test.ts). One tiny model (ConvDoraNet of peft_fixtures_net.py,
written again in src/fixture-nets.test-util.ts) chains all four layer kinds; PEFT adapters are saved
next to their outputs, merged weights, gradients, a training-mode output through fixed dropout
masks, and the initial weights after torch.manual_seed. Writes packages/core/__fixtures__/convdora-*."""
import os
import sys

import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT, save_adapter  # noqa: E402

os.makedirs(OUT, exist_ok=True)
from peft_fixtures_net import ConvDoraNet  # noqa: E402

# PEFT writes the model class's module into adapter_config.json (auto_mapping.parent_library); the
# committed fixtures were made while the class lived in this script, so keep naming it that way
ConvDoraNet.__module__ = "__main__"



class FixedMask(nn.Module):
    """Stands in for nn.Dropout in training mode with a known mask (already divided by 1 - p)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask




def perturb_magnitudes(pm):
    """Move the magnitudes away from their init (the norms) so that a test sees them."""
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.1 * torch.arange(p.numel()).float().view(p.shape) / p.numel())


def fresh():
    """The base model; built before torch.manual_seed, so that the seed starts PEFT's own draws."""
    m = ConvDoraNet()
    m.load_state_dict(base_sd)
    return m


torch.manual_seed(90)
base = ConvDoraNet().eval()
base_sd = {k: v.clone().contiguous() for k, v in base.state_dict().items()}
save_file(base_sd, os.path.join(OUT, "convdora-base.safetensors"))
ids = torch.randint(0, 20, (2, 6, 6), generator=torch.Generator().manual_seed(91))
expected = {"ids": ids.to(torch.int32), "base_out": base(ids).detach()}

# 1. DoRA on the Embedding, the strided Conv2d and the Conv1d (rank and alpha patterns, dropout)
m = fresh()
torch.manual_seed(92)
cfg = dict(r=4, lora_alpha=8, target_modules=["embed", "conv", "conv1d"], use_dora=True, init_lora_weights=False,
           rank_pattern={"conv1d": 2}, alpha_pattern={"embed": 3}, lora_dropout=0.1)
pm = get_peft_model(m, LoraConfig(**cfg)).eval()
perturb_magnitudes(pm)
save_adapter(pm, os.path.join(OUT, "convdora-dora"))
with torch.no_grad():
    expected["dora.out"] = pm(ids)
# gradients of sum(out * g) in eval mode: the norm is detached, so A and B get no gradient through it
g = torch.randn(expected["dora.out"].shape, generator=torch.Generator().manual_seed(93))
expected["dora.grad_weight"] = g
pm.zero_grad()
(pm(ids) * g).sum().backward()
for n, p in pm.named_parameters():
    if p.requires_grad:
        expected[f"dora.grad.{n}"] = p.grad.detach().clone()
# training mode: dropout is active, so DoRA recomputes the base output on the dropped input
masks = {}
mask_gen = torch.Generator().manual_seed(94)
for path, shape in [("conv", (2, 6, 6, 6)), ("conv1d", (2, 8, 9))]:
    mask = (torch.rand(shape, generator=mask_gen) > 0.1).float() / 0.9
    masks[path] = mask
    expected[f"dora.mask.{path}"] = mask
    pm.base_model.model.get_submodule(path).lora_dropout["default"] = FixedMask(mask)
pm.train()
with torch.no_grad():
    expected["dora.train_out"] = pm(ids)
pm.eval()
with torch.no_grad():
    merged = pm.merge_and_unload()
    for path in ["embed", "conv", "conv1d"]:
        expected[f"dora.merged.{path}.weight"] = merged.get_submodule(path).weight.clone()
    expected["dora.merged_out"] = merged(ids)

# 2. two DoRA adapters merged together: each norm is taken on the unmerged base weight (PEFT 0.21)
m = fresh()
torch.manual_seed(95)
pm2 = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["embed", "conv"], use_dora=True, init_lora_weights=False)).eval()
perturb_magnitudes(pm2)
save_adapter(pm2, os.path.join(OUT, "convdora-dora-second"))
both = PeftModel.from_pretrained(fresh(), os.path.join(OUT, "convdora-dora"))
both.load_adapter(os.path.join(OUT, "convdora-dora-second"), adapter_name="second")
both.base_model.merge_adapter(adapter_names=["default", "second"])
for path in ["embed", "conv"]:
    expected[f"both.merged.{path}.weight"] = both.base_model.model.get_submodule(path).base_layer.weight.detach().clone()

# 3. plain LoRA on the grouped conv (groups=2, r divisible by 2): lora_B is grouped; no merge
m = fresh()
torch.manual_seed(96)
pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["gconv", "conv"], init_lora_weights=False)).eval()
save_adapter(pm, os.path.join(OUT, "convdora-grouped"))
with torch.no_grad():
    expected["grouped.out"] = pm(ids)

# 4. DoRA on the grouped conv: PEFT's norm reshapes B·A ([out/groups, in·k]) into the kernel's shape
m = fresh()
torch.manual_seed(97)
pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["gconv"], use_dora=True, init_lora_weights=False)).eval()
perturb_magnitudes(pm)
save_adapter(pm, os.path.join(OUT, "convdora-grouped-dora"))
with torch.no_grad():
    expected["grouped_dora.out"] = pm(ids)

# 5. initial weights after torch.manual_seed, magnitudes included
for label, seed, init in [("init", 98, True), ("init_false", 99, False), ("init_lora_ga", 100, "lora_ga"), ("init_gaussian", 101, "gaussian")]:
    m = fresh()
    torch.manual_seed(seed)
    pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["embed", "conv", "conv1d", "gconv"], use_dora=True, init_lora_weights=init))
    for n, p in pm.named_parameters():
        if "lora_" in n:
            expected[f"{label}.{n}"] = p.detach().clone()

save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "convdora-expected.safetensors"))
print("convdora fixtures written:", len(expected), "tensors")
