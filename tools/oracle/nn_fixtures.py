"""Fixtures for @lora/nn, made by PyTorch (and transformers' schedules): initial weights after
torch.manual_seed, layer outputs, AdamW/SGD trajectories, clipping, cross-entropy, state-dict names.
Writes packages/nn/__fixtures__/torch-nn.safetensors and torch-nn.json."""
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import save_file

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "nn", "__fixtures__")
os.makedirs(OUT, exist_ok=True)
t = {}
meta = {"torch": torch.__version__}


def put(name, x):
    # clone: .float().numpy() shares memory with a float32 tensor, which later steps change in place
    t[name] = np.ascontiguousarray(x.detach().float().clone().numpy() if isinstance(x, torch.Tensor) else x)


# 1. initial weights after torch.manual_seed (PyTorch draws weight, then bias)
torch.manual_seed(0)
lin = nn.Linear(16, 8)
put("init.linear.weight", lin.weight); put("init.linear.bias", lin.bias)
torch.manual_seed(1)
emb = nn.Embedding(10, 6, padding_idx=2)
put("init.embedding.weight", emb.weight)
torch.manual_seed(2)
c2 = nn.Conv2d(4, 6, (3, 2), groups=2)
put("init.conv2d.weight", c2.weight); put("init.conv2d.bias", c2.bias)
torch.manual_seed(3)
c1 = nn.Conv1d(3, 4, 5)
put("init.conv1d.weight", c1.weight); put("init.conv1d.bias", c1.bias)

# 2. forward outputs
g = torch.Generator().manual_seed(4)
rnd = lambda *s: torch.randn(*s, generator=g)
x = rnd(2, 5, 16)
put("fwd.linear.x", x); put("fwd.linear.y", lin(x))
conv_cases = {
    "conv2d_stride2_dil2_pad12_groups2": dict(cin=4, cout=6, k=(3, 3), stride=2, padding=(1, 2), dilation=2, groups=2, hw=(11, 9)),
    "conv2d_same": dict(cin=3, cout=5, k=(4, 3), stride=1, padding="same", dilation=1, groups=1, hw=(7, 6)),
    "conv2d_valid_stride3": dict(cin=2, cout=4, k=(2, 2), stride=(3, 2), padding=0, dilation=1, groups=1, hw=(10, 9)),
    "conv2d_depthwise_dil3": dict(cin=4, cout=4, k=(3, 3), stride=1, padding=3, dilation=3, groups=4, hw=(8, 8)),
}
for name, c in conv_cases.items():
    m = nn.Conv2d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    xi = rnd(2, c["cin"], *c["hw"])
    put(f"fwd.{name}.weight", m.weight); put(f"fwd.{name}.bias", m.bias); put(f"fwd.{name}.x", xi); put(f"fwd.{name}.y", m(xi))
meta["conv2d"] = {k: {kk: vv for kk, vv in v.items()} for k, v in conv_cases.items()}
c1cases = {"conv1d_stride2_dil2_pad3_groups3": dict(cin=6, cout=3, k=4, stride=2, padding=3, dilation=2, groups=3, l=17)}
for name, c in c1cases.items():
    m = nn.Conv1d(c["cin"], c["cout"], c["k"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    xi = rnd(2, c["cin"], c["l"])
    put(f"fwd.{name}.weight", m.weight); put(f"fwd.{name}.bias", m.bias); put(f"fwd.{name}.x", xi); put(f"fwd.{name}.y", m(xi))
meta["conv1d"] = c1cases
ln = nn.LayerNorm(16)
with torch.no_grad():
    ln.weight.copy_(rnd(16)); ln.bias.copy_(rnd(16))
put("fwd.layernorm.weight", ln.weight); put("fwd.layernorm.bias", ln.bias); put("fwd.layernorm.y", ln(x))
rms = nn.RMSNorm(16, eps=1e-6)
with torch.no_grad():
    rms.weight.copy_(rnd(16))
put("fwd.rmsnorm.weight", rms.weight); put("fwd.rmsnorm.y", rms(x))
put("fwd.gelu.y", F.gelu(x)); put("fwd.gelu_tanh.y", F.gelu(x, approximate="tanh")); put("fwd.silu.y", F.silu(x))
logits = rnd(7, 11)
labels = torch.tensor([3, -100, 0, 10, -100, 5, 5])
put("loss.logits", logits); t["loss.labels"] = labels.numpy().astype(np.int32)
put("loss.mean", F.cross_entropy(logits, labels)); put("loss.sum", F.cross_entropy(logits, labels, reduction="sum"))
put("loss.none", F.cross_entropy(logits, labels, reduction="none"))

# 3. optimizer trajectories: 10 steps on a fixed least-squares problem
X = rnd(12, 5); Y = rnd(12, 3)
W0 = rnd(3, 5) * 0.3; B0 = rnd(3) * 0.1
put("opt.x", X); put("opt.y", Y); put("opt.w0", W0); put("opt.b0", B0)
for label, make in {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
    "adamw_default": lambda p: torch.optim.AdamW(p),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
}.items():
    w = W0.clone().requires_grad_(True); b = B0.clone().requires_grad_(True)
    opt = make([w, b])
    for step in range(10):
        opt.zero_grad()
        loss = ((X @ w.T + b - Y) ** 2).mean()
        loss.backward()
        opt.step()
        put(f"opt.{label}.{step}.w", w); put(f"opt.{label}.{step}.b", b)

# 4. clip_grad_norm_
ga = rnd(4, 3) * 3; gb = rnd(5) * 3
pa = torch.zeros(4, 3, requires_grad=True); pb = torch.zeros(5, requires_grad=True)
pa.grad = ga.clone(); pb.grad = gb.clone()
total = torch.nn.utils.clip_grad_norm_([pa, pb], 1.5)
put("clip.a", ga); put("clip.b", gb); put("clip.a_clipped", pa.grad); put("clip.b_clipped", pb.grad); put("clip.total", total.reshape(1))

# 5. state-dict names of a nested model
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"q_proj": nn.Linear(4, 4, bias=False), "o_proj": nn.Linear(4, 4)})
        self.norm = nn.LayerNorm(4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))


meta["state_dict_names"] = list(Net().state_dict().keys())
meta["named_modules"] = [n for n, _ in Net().named_modules()]

# 6. schedules (transformers)
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup  # noqa: E402

sched = {}
for label, fn in {"linear": lambda o: get_linear_schedule_with_warmup(o, 3, 10), "cosine": lambda o: get_cosine_schedule_with_warmup(o, 3, 10), "constant": lambda o: get_constant_schedule_with_warmup(o, 3)}.items():
    o = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = fn(o)
    vals = []
    for _ in range(12):
        vals.append(o.param_groups[0]["lr"])
        o.step(); s.step()
    sched[label] = vals
meta["schedules"] = sched
save_file(t, os.path.join(OUT, "torch-nn.safetensors"), metadata={"torch": torch.__version__})
with open(os.path.join(OUT, "torch-nn.json"), "w") as f:
    json.dump(meta, f, indent=1)
print("nn fixtures written with torch", torch.__version__)
