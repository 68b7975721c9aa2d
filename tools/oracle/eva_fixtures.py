"""PEFT 0.21 EVA fixtures for @lora/eva: the EvaNet of eva_net.py (weights and fixed batches), and per case
the EVA state dict, the adapter's rank/alpha patterns and target modules after initialize_lora_eva_weights,
the adapter PEFT saves, and how many batches each hook layer's incremental PCA used.
Writes packages/eva/__fixtures__/ (run with the oracle venv: python tools/oracle/eva_fixtures.py)."""
import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import peft  # noqa: E402
from peft import EvaConfig, LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights  # noqa: E402

from eva_net import EvaNet, ThreeNet  # noqa: E402
from eva_counting import count_pca_updates  # noqa: E402
from oracle_common import save_adapter  # noqa: E402

ROOT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "eva", "__fixtures__")
os.makedirs(ROOT, exist_ok=True)

updates = count_pca_updates()  # batches each hook layer's incremental PCA used

torch.manual_seed(0)
base = EvaNet().eval()
for p in base.parameters():
    torch.nn.init.normal_(p, std=0.3) if p.dim() == 2 else None
with torch.no_grad():
    base.embed.weight.normal_(0, 1)
base_sd = {k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}
save_file(base_sd, os.path.join(ROOT, "evanet.safetensors"))

g = torch.Generator().manual_seed(1)
batches, labelled = [], []
for b in range(6):
    ids = torch.randint(0, 40, (4, 16), generator=g)
    mask = torch.ones(4, 16, dtype=torch.long)
    for row in range(4):
        n = int(torch.randint(10, 17, (1,), generator=g))
        mask[row, n:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    batches.append({"input_ids": ids, "attention_mask": mask})
    labelled.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
tensors = {}
for i, b in enumerate(labelled):
    for k, v in b.items():
        tensors[f"{k}.{i}"] = v.to(torch.int32).contiguous()
save_file(tensors, os.path.join(ROOT, "batches.safetensors"))

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
cases = {
    "rho2": (dict(r=4, lora_alpha=8, target_modules=ALL), dict(rho=2.0), batches),
    "rho1": (dict(r=4, lora_alpha=8, target_modules=ALL), dict(rho=1.0), batches),
    "whiten": (dict(r=4, lora_alpha=8, target_modules=ALL), dict(rho=2.0, whiten=True), batches),
    "labels": (dict(r=4, lora_alpha=8, target_modules=ALL), dict(rho=2.0), labelled),
    "patterns": (
        dict(r=4, lora_alpha=8, target_modules=ALL, use_rslora=True, rank_pattern={"up_proj": 2, "layers.1.o_proj": 6}, alpha_pattern={"down_proj": 4}),
        dict(rho=1.5, tau=0.9, adjust_scaling_factors=False),
        labelled,
    ),
    "embedding": (dict(r=4, lora_alpha=8, target_modules=["embed", "q_proj", "k_proj", "down_proj"]), dict(rho=2.0, use_label_mask=False), labelled),
}


def fresh():
    m = EvaNet()
    m.load_state_dict(base_sd)
    return m.eval()


summary = {"peft": peft.__version__, "torch": torch.__version__, "cases": {}}
for name, (lora_kw, eva_kw, data) in cases.items():
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    config = LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(**eva_kw), **lora_kw)
    # on the plain model (keys are its module names) and on the PeftModel (base_model.model.…): the same components
    updates.clear()
    plain = get_eva_state_dict(fresh(), data, peft_config=config, show_progress_bar=False)
    plain_updates = dict(updates)
    torch.manual_seed(0)
    pm = get_peft_model(fresh(), config)
    updates.clear()
    sd = get_eva_state_dict(pm, data, show_progress_bar=False)
    assert list(sd) == ["base_model.model." + k for k in plain], (list(sd), list(plain))
    assert {k.replace('base_model.model.', ''): v for k, v in updates.items()} == plain_updates, (dict(updates), plain_updates)
    for k, v in plain.items():
        assert torch.equal(v, sd["base_model.model." + k])
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "eva_state_dict.safetensors"))
    initialize_lora_eva_weights(pm, eva_state_dict={k: v.clone() for k, v in sd.items()})
    c = pm.peft_config["default"]
    save_adapter(pm, os.path.join(out, "adapter"))
    scalings = {n: m.scaling["default"] for n, m in pm.named_modules() if hasattr(m, "scaling") and "default" in m.scaling}
    result = {
        "lora": lora_kw,
        "eva": eva_kw,
        "labels": data is labelled,
        "keys": list(sd),
        "shapes": {k: list(v.shape) for k, v in sd.items()},
        "rank_pattern": c.rank_pattern,
        "alpha_pattern": c.alpha_pattern,
        "target_modules": sorted(c.target_modules),
        "updates": plain_updates,
        "scaling": {k.replace("base_model.model.", ""): v for k, v in scalings.items()},
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    summary["cases"][name] = {"ranks": {k: v[0] for k, v in result["shapes"].items()}, "updates": plain_updates}
    print(name, {k.split("layers.")[-1]: v[0] for k, v in result["shapes"].items()}, "updates", sorted(set(plain_updates.values())))

# spec §7.5: three Linear layers, b and c with equal inputs; forward_fn=model(x), prepare functions None
x_batches = []
for b in range(10):
    ga = torch.Generator().manual_seed(200 + b)
    gb = torch.Generator().manual_seed(300 + b)
    left = torch.randn(24, 8, generator=ga) * torch.tensor([8, 2, 1, .5, .4, .3, .2, .1])
    right = torch.randn(24, 8, generator=gb) * torch.tensor([1.2, 1.1, 1, 1, .9, .9, .8, .8])
    x_batches.append(torch.cat([left, right], 1))
three = ThreeNet().eval()
torch.manual_seed(3)
for p in three.parameters():
    torch.nn.init.normal_(p, std=0.5)
three_sd = {k: v.detach().clone().contiguous() for k, v in three.state_dict().items()}
out = os.path.join(ROOT, "three")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
save_file({**{f"x.{i}": x for i, x in enumerate(x_batches)}, **three_sd}, os.path.join(out, "inputs.safetensors"))
three_results = {}
for rho in [1.0, 2.0]:
    for adjust in [True, False]:
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["a", "b", "c"], init_lora_weights="eva", eva_config=EvaConfig(rho=rho, adjust_scaling_factors=adjust))
        m = ThreeNet()
        m.load_state_dict(three_sd)
        updates.clear()
        kw = dict(forward_fn=lambda model, x: model(x), prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None, show_progress_bar=False)
        torch.manual_seed(0)
        pm = get_peft_model(m, config)
        sd = get_eva_state_dict(pm, x_batches, **kw)
        u = dict(updates)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, f"rho{int(rho)}-{'adjust' if adjust else 'noadjust'}.safetensors"))
        shapes = {k: list(v.shape) for k, v in sd.items()}
        initialize_lora_eva_weights(pm, eva_state_dict=dict(sd))
        c = pm.peft_config["default"]
        key = f"rho{int(rho)}-{'adjust' if adjust else 'noadjust'}"
        three_results[key] = {
            "shapes": shapes,
            "rank_pattern": c.rank_pattern,
            "alpha_pattern": c.alpha_pattern,
            "updates": u,
            "scaling": {n.replace("base_model.model.", ""): mm.scaling["default"] for n, mm in pm.named_modules() if hasattr(mm, "scaling") and "default" in mm.scaling},
        }
        print("three", key, three_results[key]["shapes"], c.rank_pattern, c.alpha_pattern, u)
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(three_results, f, indent=1, sort_keys=True)

# torch's CPU argsort(descending=True) on tie-heavy arrays: the order rankDistribution must reproduce
gs = torch.Generator().manual_seed(5)
sorts = []
for n in [3, 16, 17, 40, 100, 300]:
    for levels in [2, 5, 1000]:
        v = torch.randint(0, levels, (n,), generator=gs).double() / levels
        sorts.append({"values": v.tolist(), "order": v.argsort(descending=True).tolist()})
with open(os.path.join(ROOT, "torch-argsort.json"), "w") as f:
    json.dump(sorts, f)
with open(os.path.join(ROOT, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
