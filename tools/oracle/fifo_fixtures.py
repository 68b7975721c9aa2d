"""PEFT 0.21 fixtures for LoRA with fan_in_fan_out (transformers' Conv1D, whose weight is [in, out]),
for packages/core/src/layers/fan-in-fan-out.test.ts. A tiny GPT-2-like model (Conv1D c_attn / c_proj / c_fc,
LayerNorms, one causal attention head, and an nn.Linear head: fifo_fixtures_net.py), written again in the TS test.
Writes packages/core/__fixtures__/fifo-*."""
import json
import os
import shutil
import sys
import warnings

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT, save_adapter  # noqa: E402

os.makedirs(OUT, exist_ok=True)
from fifo_fixtures_net import D, GptNet  # noqa: E402




def fresh():
    m = GptNet()
    m.load_state_dict(base_sd)
    return m.eval()


def peft_model(seed, **kwargs):
    """get_peft_model, recording the warnings PEFT gives about fan_in_fan_out."""
    m = fresh()
    torch.manual_seed(seed)
    config = LoraConfig(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_peft_model(m, config).eval()
    said = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
    return pm, said


# Base weights: built after torch.manual_seed(0), so the TS model built after manualSeed(0) must equal them
torch.manual_seed(0)
base = GptNet().eval()
base_sd = {k: v.clone().contiguous() for k, v in base.state_dict().items()}
save_file(base_sd, os.path.join(OUT, "fifo-base.safetensors"))
x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
expected = {"x": x}
with torch.no_grad():
    expected["base_out"] = base(x)

cases = {
    # Conv1D targets only; lora_dropout is inactive in eval
    "fifo-plain": dict(r=4, lora_alpha=8, lora_dropout=0.1, fan_in_fan_out=True, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False),
    # DoRA on Conv1D layers, one of them square ([8, 8] attn.c_proj) where an axis mix-up would not fail on shapes
    "fifo-dora": dict(r=4, lora_alpha=8, fan_in_fan_out=True, use_dora=True, target_modules=["c_attn", "c_proj"], init_lora_weights=False),
    # lora_bias and rsLoRA
    "fifo-bias": dict(r=3, lora_alpha=6, use_rslora=True, fan_in_fan_out=True, lora_bias=True, target_modules=["c_attn", "c_fc"], init_lora_weights=False),
    # 'all-linear' (Conv1D and the nn.Linear head: PEFT warns once and saves fan_in_fan_out=False), rank and alpha patterns
    "fifo-patterns": dict(r=4, lora_alpha=8, fan_in_fan_out=True, target_modules="all-linear", rank_pattern={"c_fc": 2}, alpha_pattern={"h.1.attn.c_attn": 3}, init_lora_weights=False),
}
record = {}
for name, kwargs in cases.items():
    pm, said = peft_model(10, **kwargs)
    with torch.no_grad():  # DoRA's magnitudes and lora_B's biases moved away from their init, so that the test sees them
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.1 * torch.arange(p.numel()).float() / p.numel())
            elif n.endswith("lora_B.default.bias"):
                p.add_(0.3)
    save_adapter(pm, os.path.join(OUT, name))
    record[name] = {"warnings": said, "fan_in_fan_out": pm.peft_config["default"].fan_in_fan_out,
                    "targets": sorted(n for n, mod in pm.named_modules() if hasattr(mod, "lora_A") and "default" in mod.lora_A)}
    # loading the saved adapter corrects the saved fan_in_fan_out again, layer by layer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(fresh(), os.path.join(OUT, name))
    record[name]["load_warnings"] = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
    record[name]["load_fan_in_fan_out"] = loaded.peft_config["default"].fan_in_fan_out
    with torch.no_grad():
        expected[f"{name}.out"] = pm(x)
    # gradients of the adapter's parameters for loss = mean(out²)
    pm.zero_grad()
    (pm(x) ** 2).mean().backward()
    for n, p in pm.named_parameters():
        if p.grad is not None:
            expected[f"{name}.grad.{n}"] = p.grad.clone()
    with torch.no_grad():
        merged = pm.merge_and_unload()
        for k, v in merged.state_dict().items():
            expected[f"{name}.merged.{k}"] = v.clone()

# the auto-corrections on their own: nn.Linear with fan_in_fan_out=True, Conv1D with fan_in_fan_out=False,
# and a mix where the config flips twice (PEFT changes the config object as it goes)
for name, kwargs in {
    "linear-true": dict(r=2, fan_in_fan_out=True, target_modules=["head"]),
    "conv1d-false": dict(r=2, fan_in_fan_out=False, target_modules=["c_fc"]),
    "mixed-true": dict(r=2, fan_in_fan_out=True, target_modules=["c_fc", "head"]),
    "mixed-false": dict(r=2, fan_in_fan_out=False, target_modules=["c_fc", "head"]),
}.items():
    pm, said = peft_model(11, **kwargs)
    record[name] = {"warnings": said, "fan_in_fan_out": pm.peft_config["default"].fan_in_fan_out,
                    "layers": {n: mod.fan_in_fan_out for n, mod in pm.named_modules() if hasattr(mod, "fan_in_fan_out") and hasattr(mod, "lora_A")}}
    if name == "conv1d-false":
        save_adapter(pm, os.path.join(OUT, "fifo-corrected"))
        record[name]["saved_fan_in_fan_out"] = json.load(open(os.path.join(OUT, "fifo-corrected", "adapter_config.json")))["fan_in_fan_out"]

# initial weights after torch.manual_seed on Conv1D targets: default (A kaiming on [r, in], B zero), DoRA's
# magnitude (column norms of the [in, out] weight), orthogonal, and PiSSA (PEFT transposes the weight first)
pm, _ = peft_model(20, r=4, lora_alpha=8, fan_in_fan_out=True, use_dora=True, target_modules=["c_attn", "c_fc"])
for n, p in pm.named_parameters():
    if "lora_" in n:
        expected[f"init.{n}"] = p.detach().clone()
pm, _ = peft_model(21, r=4, lora_alpha=8, fan_in_fan_out=True, target_modules=["c_attn", "c_fc"], init_lora_weights="orthogonal")
for n, p in pm.named_parameters():
    if "lora_" in n:
        expected[f"orthogonal.{n}"] = p.detach().clone()
pm, _ = peft_model(22, r=3, lora_alpha=6, fan_in_fan_out=True, target_modules=["c_attn", "mlp.c_proj"], init_lora_weights="pissa")
for path in ["h.0.attn.c_attn", "h.1.mlp.c_proj"]:
    layer = pm.base_model.model.get_submodule(path)
    expected[f"pissa.{path}.residual"] = layer.base_layer.weight.detach().clone()
    expected[f"pissa.{path}.ba"] = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().clone()
with torch.no_grad():
    expected["pissa.out"] = pm(x)

# OLoRA on a Conv1D: PEFT 0.21's olora_init does not transpose the weight (unlike pissa_init), so lora_A gets
# the shape [r, out] instead of [r, in]; on a non-square layer the forward pass then fails. Recorded so that the
# test can state it.
try:
    pm, _ = peft_model(23, r=2, fan_in_fan_out=True, target_modules=["c_fc"], init_lora_weights="olora")
    a_shape = list(pm.base_model.model.h[0].mlp.c_fc.lora_A["default"].weight.shape)
    try:
        with torch.no_grad():
            pm(x)
        olora_forward = "ok"
    except RuntimeError as e:
        olora_forward = str(e).split("\n")[0]
    record["olora"] = {"lora_A_shape": a_shape, "in": D, "out": 4 * D, "forward": olora_forward}
except Exception as e:  # noqa: BLE001
    record["olora"] = {"error": str(e)}

# add_weighted_adapter on fan_in_fan_out layers: PEFT decomposes ΔWᵀ (svd); cat stacks the factors
m = fresh()
torch.manual_seed(30)
pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, fan_in_fan_out=True, target_modules=["c_attn", "attn.c_proj"], init_lora_weights=False), adapter_name="a")
torch.manual_seed(31)
pm.add_adapter("b", LoraConfig(r=2, lora_alpha=6, fan_in_fan_out=True, target_modules=["c_attn", "attn.c_proj"], init_lora_weights=False))
d = os.path.join(OUT, "fifo-weighted")
shutil.rmtree(d, ignore_errors=True)
pm.save_pretrained(d)  # a non-default adapter goes to a sub-folder: fifo-weighted/a, fifo-weighted/b
for root, _, files in os.walk(d):
    for f in files:
        if f.endswith(".md"):
            os.remove(os.path.join(root, f))
pm.eval()
for label, kw in {"svd": dict(combination_type="svd", svd_rank=3), "cat": dict(combination_type="cat")}.items():
    pm.add_weighted_adapter(["a", "b"], [0.5, 1.5], label, **kw)
    pm.set_adapter(label)
    with torch.no_grad():
        expected[f"weighted.{label}.out"] = pm(x)
        for path in ["h.0.attn.c_attn", "h.1.attn.c_proj"]:
            expected[f"weighted.{label}.delta.{path}"] = pm.base_model.model.get_submodule(path).get_delta_weight(label).clone()

save_file({k: v.contiguous().float() for k, v in expected.items()}, os.path.join(OUT, "fifo-expected.safetensors"), metadata={"peft": peft.__version__, "torch": torch.__version__})
with open(os.path.join(OUT, "fifo-record.json"), "w") as f:
    json.dump(record, f, indent=1)
print("fan_in_fan_out fixtures written with peft", peft.__version__)
print(json.dumps(record, indent=1))
