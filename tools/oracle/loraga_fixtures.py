"""PEFT 0.21 fixtures for @lora/loraga (packages/loraga/src/*.test.ts): LoRA-GA on LoraGaNet and TwiceNet
(loraga_net.py, written again in packages/loraga/src/loraga-net.test-util.ts) with fixed batches.

For every deterministic direction x scale pair (ArBr, A2rBr, ArB2r x stable, weight_svd, gd_scale, unit;
'random' draws its components and is checked by invariants in the tests) it records what does not depend
on torch.svd_lowrank's random sketch: the mean gradients preprocess_loraga attaches, per target the
singular values of s*B*A, ||W_new - W0||_F, ||A||_F and ||B||_F, and the model's output at init.
Writes packages/loraga/__fixtures__/net-base.safetensors, net-expected.safetensors, twice-*.safetensors."""
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraGAConfig, preprocess_loraga
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from loraga_net import LoraGaNet, TwiceNet, lm_loss  # noqa: E402

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "loraga", "__fixtures__")
os.makedirs(OUT, exist_ok=True)

R, ALPHA = 4, 8
TARGETS = ["embed", "q_proj", "c_fc", "conv", "head"]
GRAD_TARGETS = ["q_proj", "c_fc", "head"]
DIRECTIONS = ["ArBr", "A2rBr", "ArB2r"]
SCALES = ["stable", "weight_svd", "gd_scale", "unit"]

torch.manual_seed(160)
base_sd = {k: v.clone().contiguous() for k, v in LoraGaNet().state_dict().items()}
save_file(base_sd, os.path.join(OUT, "net-base.safetensors"))
g = torch.Generator().manual_seed(161)
batches = [(torch.randint(0, 20, (2, 5), generator=g), torch.randint(0, 20, (2, 5), generator=g)) for _ in range(3)]
x = torch.randint(0, 20, (2, 5), generator=g)
expected = {"x": x.to(torch.int32)}
for i, (ids, labels) in enumerate(batches):
    expected[f"batch.{i}.ids"] = ids.to(torch.int32)
    expected[f"batch.{i}.labels"] = labels.to(torch.int32)


def fresh():
    m = LoraGaNet()
    m.load_state_dict(base_sd)
    return m


with torch.no_grad():
    expected["base_out"] = fresh().eval()(x)

for d in DIRECTIONS:
    for s in SCALES:
        model = fresh()
        cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights="lora_ga",
                         lora_ga_config=LoraGAConfig(direction=d, scale=s))

        def train_step():
            for ids, labels in batches:
                lm_loss(model(ids), labels).backward()

        preprocess_loraga(model, cfg, train_step)
        for p in GRAD_TARGETS:
            grad = getattr(model, p)._peft_loraga_grad.clone()
            if f"grad.{p}" in expected:
                assert torch.equal(expected[f"grad.{p}"], grad)
            expected[f"grad.{p}"] = grad
        for p in ["embed", "conv"]:
            assert not hasattr(getattr(model, p), "_peft_loraga_grad")
        torch.manual_seed(162)
        pm = get_peft_model(model, cfg).eval()
        key = f"{d}.{s}"
        for p in GRAD_TARGETS:
            layer = getattr(pm.base_model.model, p)
            A = layer.lora_A["default"].weight.detach().double()
            B = layer.lora_B["default"].weight.detach().double()
            scaling = layer.scaling["default"]
            w_new = layer.base_layer.weight.detach().double()
            w0 = base_sd[f"{p}.weight"].double()
            expected[f"{key}.{p}.sv"] = torch.linalg.svdvals(scaling * B @ A)[:R].float()
            expected[f"{key}.{p}.delta_norm"] = torch.linalg.norm(w_new - w0).reshape(1).float()
            expected[f"{key}.{p}.a_norm"] = torch.linalg.norm(A).reshape(1).float()
            expected[f"{key}.{p}.b_norm"] = torch.linalg.norm(B).reshape(1).float()
            delta = scaling * B @ A
            if layer.fan_in_fan_out:
                delta = delta.T
            assert (w_new + delta - w0).abs().max() < 1e-5
        with torch.no_grad():
            expected[f"{key}.out"] = pm(x)
        print(key, "sv(head)", expected[f"{key}.head.sv"].tolist())

save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "net-expected.safetensors"))

# A module applied twice per forward: its mean gradient is the sum over 2 uses x 3 batches, divided by 6
torch.manual_seed(163)
twice = TwiceNet()
twice_sd = {k: v.clone().contiguous() for k, v in twice.state_dict().items()}
xs = [torch.randn(4, 6, generator=g) for _ in range(3)]
cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["lin", "out"], init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())


def twice_step():
    for xb in xs:
        twice(xb).pow(2).mean().backward()


preprocess_loraga(twice, cfg, twice_step)
tw = {f"x.{i}": xb for i, xb in enumerate(xs)}
tw.update({f"grad.{p}": getattr(twice, p)._peft_loraga_grad for p in ["lin", "out"]})
save_file(twice_sd, os.path.join(OUT, "twice-base.safetensors"))
save_file({k: v.contiguous() for k, v in tw.items()}, os.path.join(OUT, "twice-expected.safetensors"))
print("wrote", sorted(os.listdir(OUT)))
