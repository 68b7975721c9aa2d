"""PEFT 0.21 fixtures for @lora/core on a small custom model (the same `Net` is written in the TS
test): a base checkpoint, adapters saved by PEFT (several configs), their outputs, merged weights,
and initial LoRA weights after torch.manual_seed. Writes packages/core/__fixtures__/."""
import os
import shutil
import sys

import numpy as np
import peft
import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file



sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT, save_adapter, seeded_lora_init  # noqa: E402

os.makedirs(OUT, exist_ok=True)
from peft_fixtures_net import Net  # noqa: E402




torch.manual_seed(0)
base = Net().eval()
base_sd = {k: v.clone().contiguous() for k, v in base.state_dict().items()}
save_file(base_sd, os.path.join(OUT, "base.safetensors"))
x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
expected = {"x": x, "base_out": base(x).detach()}

cases = {
    "peft-qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    "peft-patterns": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "mlp", "out"], rank_pattern={"mlp": 2}, alpha_pattern={"out": 3},
                          lora_dropout=0.1, layers_to_transform=[1], layers_pattern="layers", init_lora_weights=False),
    "peft-regex-bias": dict(r=3, lora_alpha=6, target_modules=r"layers\.0\..*proj", lora_bias=True, init_lora_weights=False),
    "peft-dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "mlp", "head"], use_dora=True, init_lora_weights=False),
}
for name, kwargs in cases.items():
    model = Net()
    model.load_state_dict(base_sd)
    torch.manual_seed(10)
    pm = get_peft_model(model, LoraConfig(**kwargs)).eval()
    if kwargs.get("use_dora"):
        with torch.no_grad():  # move the magnitudes away from their init so that the test sees them
            for n, p in pm.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1.0 + 0.1 * torch.arange(p.numel()).float() / p.numel())
    if kwargs.get("lora_bias"):
        with torch.no_grad():  # lora_B biases start at random under init False; make them clearly non-zero
            for n, p in pm.named_parameters():
                if n.endswith("lora_B.default.bias"):
                    p.add_(0.3)
    d = os.path.join(OUT, name)
    save_adapter(pm, d)
    with torch.no_grad():
        expected[f"{name}.out"] = pm(x)
        merged = pm.merge_and_unload()
        for k, v in merged.state_dict().items():
            if "layers.1.mlp" in k or "layers.0.q_proj" in k:
                expected[f"{name}.merged.{k}"] = v.clone()

# initial LoRA weights after torch.manual_seed (default init: A kaiming-uniform, B zero)
for n, t in seeded_lora_init(Net, base_sd, 5, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "mlp"])).items():
    expected[f"init.{n}"] = t
save_file({k: v.contiguous().float() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"), metadata={"peft": peft.__version__, "torch": torch.__version__})
print("peft fixtures written with peft", peft.__version__)

# add_weighted_adapter: two adapters saved by PEFT, then each combination type's delta weights and output
combos = {
    "linear": dict(combination_type="linear"),
    "cat": dict(combination_type="cat"),
    "svd": dict(combination_type="svd", svd_rank=3),
    "ties": dict(combination_type="ties", density=0.5),
    "ties_frequency": dict(combination_type="ties", density=0.5, majority_sign_method="frequency"),
    "magnitude_prune": dict(combination_type="magnitude_prune", density=0.6),
    "ties_svd": dict(combination_type="ties_svd", density=0.5, svd_rank=4),
    "magnitude_prune_svd": dict(combination_type="magnitude_prune_svd", density=0.6, svd_rank=2),
}
weighted = {}
model = Net()
model.load_state_dict(base_sd)
torch.manual_seed(30)
pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "mlp"], init_lora_weights=False), adapter_name="a")
torch.manual_seed(31)
pm.add_adapter("b", LoraConfig(r=4, lora_alpha=12, use_rslora=True, target_modules=["q_proj", "mlp"], init_lora_weights=False))
for adapter in ["a", "b"]:
    d = os.path.join(OUT, f"weighted-{adapter}")
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d, selected_adapters=[adapter])
    # save_pretrained puts a non-default adapter in a sub-folder; flatten it
    sub = os.path.join(d, adapter)
    if os.path.isdir(sub):
        for f in os.listdir(sub):
            shutil.move(os.path.join(sub, f), os.path.join(d, f))
        os.rmdir(sub)
    for f in os.listdir(d):
        if f.endswith(".md"):
            os.remove(os.path.join(d, f))
pm.eval()
# mixed batch: each row through its own adapter ("__base__" = no adapter), as PEFT's adapter_names
with torch.no_grad():
    weighted["mixed.out"] = pm(x, adapter_names=["a", "b", "__base__", "a", "b"])
for label, kw in combos.items():
    pm.add_weighted_adapter(["a", "b"], [0.5, 1.5], label, **kw)
    pm.set_adapter(label)
    with torch.no_grad():
        weighted[f"{label}.out"] = pm(x)
        for path in ["layers.0.q_proj", "layers.1.mlp"]:
            layer = pm.base_model.model.get_submodule(path)
            weighted[f"{label}.delta.{path}"] = layer.get_delta_weight(label).clone()
save_file({k: v.contiguous().float() for k, v in weighted.items()}, os.path.join(OUT, "weighted.safetensors"), metadata={"peft": peft.__version__})
print("weighted-adapter fixtures written")

# LoRA on an Embedding (lora_embedding_A/B), with a Linear beside it
from peft_fixtures_net import EmbNet  # noqa: E402

torch.manual_seed(40)
emb_base = EmbNet().eval()
emb_sd = {k: v.clone().contiguous() for k, v in emb_base.state_dict().items()}
save_file(emb_sd, os.path.join(OUT, "emb-base.safetensors"))
ids = torch.tensor([[1, 5, 19, 0], [7, 7, 3, 12]])
emb_expected = {"ids": ids.to(torch.int32), "base_out": emb_base(ids).detach()}
m = EmbNet()
m.load_state_dict(emb_sd)
torch.manual_seed(41)
pm = get_peft_model(m, LoraConfig(r=3, lora_alpha=6, target_modules=["embed", "lin"], init_lora_weights=False)).eval()
save_adapter(pm, os.path.join(OUT, "peft-embedding"))
with torch.no_grad():
    emb_expected["out"] = pm(ids)
    emb_expected["merged.embed.weight"] = pm.merge_and_unload().embed.weight.clone()
for n, t in seeded_lora_init(EmbNet, emb_sd, 42, LoraConfig(r=3, lora_alpha=6, target_modules=["embed"])).items():
    emb_expected[f"init.{n}"] = t
save_file({k: v.contiguous() for k, v in emb_expected.items()}, os.path.join(OUT, "emb-expected.safetensors"))
print("embedding fixtures written")

# LoRA on Conv2d and Conv1d
from peft_fixtures_net import ConvNet  # noqa: E402

torch.manual_seed(50)
conv_base = ConvNet().eval()
conv_sd = {k: v.clone().contiguous() for k, v in conv_base.state_dict().items()}
save_file(conv_sd, os.path.join(OUT, "conv-base.safetensors"))
cx = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(51))
conv_expected = {"x": cx}
m = ConvNet()
m.load_state_dict(conv_sd)
torch.manual_seed(52)
pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["conv", "conv1d"], lora_bias=True, init_lora_weights=False)).eval()
save_adapter(pm, os.path.join(OUT, "peft-conv"))
with torch.no_grad():
    conv_expected["out"] = pm(cx)
    merged = pm.merge_and_unload()
    conv_expected["merged.conv.weight"] = merged.conv.weight.clone()
    conv_expected["merged.conv1d.weight"] = merged.conv1d.weight.clone()
    conv_expected["merged.conv1d.bias"] = merged.conv1d.bias.clone()
for n, t in seeded_lora_init(ConvNet, conv_sd, 53, LoraConfig(r=2, lora_alpha=4, target_modules=["conv"])).items():
    conv_expected[f"init.{n}"] = t
save_file({k: v.contiguous() for k, v in conv_expected.items()}, os.path.join(OUT, "conv-expected.safetensors"))
print("conv fixtures written")

# PiSSA and OLoRA: the residual base weights and the products B·A (factors' signs are arbitrary)
init_expected = {}
for label, init in {"pissa": "pissa", "olora": "olora"}.items():
    m = Net()
    m.load_state_dict(base_sd)
    pm = get_peft_model(m, LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "mlp"], init_lora_weights=init)).eval()
    for path in ["layers.0.q_proj", "layers.1.mlp"]:
        layer = pm.base_model.model.get_submodule(path)
        init_expected[f"{label}.{path}.residual"] = layer.base_layer.weight.detach().clone()
        init_expected[f"{label}.{path}.ba"] = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().clone()
    with torch.no_grad():
        init_expected[f"{label}.out"] = pm(x)
save_file({k: v.contiguous() for k, v in init_expected.items()}, os.path.join(OUT, "init-expected.safetensors"))
print("pissa/olora fixtures written")

# bias modes: which parameters PEFT trains and which keys it saves
import json  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

bias_modes = {}
for bias in ["lora_only", "all"]:
    m = Net()
    pm = get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj"], bias=bias))
    bias_modes[bias] = {"saved": sorted(get_peft_model_state_dict(pm).keys()), "trainable": sorted(n for n, p in pm.named_parameters() if p.requires_grad)}
with open(os.path.join(OUT, "bias-modes.json"), "w") as f:
    json.dump(bias_modes, f, indent=1)
print("bias-mode fixtures written")

# modules_to_save: a trained copy of `head` travels in the adapter file under the module's own names
m = Net()
m.load_state_dict(base_sd)
torch.manual_seed(60)
pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["head"], init_lora_weights=False)).eval()
with torch.no_grad():
    pm.base_model.model.head.modules_to_save["default"].weight.add_(0.25)
    pm.base_model.model.head.modules_to_save["default"].bias.sub_(0.5)
save_adapter(pm, os.path.join(OUT, "peft-modules-to-save"))
with torch.no_grad():
    mts = {"out": pm(x), "head.weight": pm.base_model.model.head.modules_to_save["default"].weight.clone()}
    with pm.disable_adapter():
        mts["disabled_out"] = pm(x)
save_file({k: v.contiguous() for k, v in mts.items()}, os.path.join(OUT, "mts-expected.safetensors"))
print("modules_to_save fixtures written")

# the orthogonal init after torch.manual_seed (B·A = 0 with non-zero factors)
m = Net()
m.load_state_dict(base_sd)
torch.manual_seed(70)
pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="orthogonal"))
orth = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" in n}
save_file({k: v.contiguous() for k, v in orth.items()}, os.path.join(OUT, "orthogonal-expected.safetensors"))
print("orthogonal fixtures written")
