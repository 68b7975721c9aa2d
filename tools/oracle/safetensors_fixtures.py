"""Safetensors and random-number fixtures for @lora/tensor, written by Python's own libraries."""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "tensor", "__fixtures__")
os.makedirs(os.path.join(OUT, "sharded"), exist_ok=True)


def as_json_values(t):
    """Values as JSON numbers, with non-finite floats spelled out (JSON has no NaN/Inf)."""
    out = []
    for v in t.flatten().tolist():
        if isinstance(v, bool):
            out.append(int(v))
        elif isinstance(v, float) and not math.isfinite(v):
            out.append("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
        else:
            out.append(v)
    return out


floats = [0.0, -0.0, 1.0, -2.5, 3.140625, 65504.0, 1e-7, 6.1e-5, 5.96e-8, 1e30, -1e-30, float("inf"), float("-inf"), float("nan")]
g = torch.Generator().manual_seed(7)
tensors = {
    "f32": torch.tensor(floats, dtype=torch.float32).reshape(2, 7),
    "f32_random": torch.randn(3, 4, 5, generator=g),
    "f16": torch.tensor(floats, dtype=torch.float32).to(torch.float16),
    "bf16": torch.tensor(floats, dtype=torch.float32).to(torch.bfloat16),
    "f64": torch.tensor([0.1, -1.0 / 3.0, 1e-300, 2.0**40], dtype=torch.float64),
    "i64": torch.tensor([0, -1, 2**31 - 1, -(2**31), 123456789], dtype=torch.int64),
    "i32": torch.tensor([[0, -5], [7, 2**31 - 1]], dtype=torch.int32),
    "i16": torch.tensor([-32768, 32767, 0], dtype=torch.int16),
    "i8": torch.tensor([-128, 127, 3], dtype=torch.int8),
    "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True], dtype=torch.bool),
    "scalar": torch.tensor(2.5, dtype=torch.float32),
    "empty": torch.zeros(0, 3, dtype=torch.float32),
    "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 16, generator=g),
}
metadata = {"format": "pt", "note": "written by tools/oracle/safetensors_fixtures.py"}
save_file(tensors, os.path.join(OUT, "python-dtypes.safetensors"), metadata=metadata)
expected = {
    name: {
        "torch_dtype": str(t.dtype),
        "shape": list(t.shape),
        # what each value is once widened to float64 / int, as torch sees it
        "values": as_json_values(t.double() if t.is_floating_point() else t.long()),
    }
    for name, t in tensors.items()
}
with open(os.path.join(OUT, "python-dtypes.expected.json"), "w") as f:
    json.dump({"metadata": metadata, "tensors": expected}, f, indent=1)

# A sharded checkpoint as transformers writes it: shards plus model.safetensors.index.json
shard1 = {"model.embed_tokens.weight": torch.randn(8, 4, generator=g), "model.norm.weight": torch.ones(4)}
shard2 = {"lm_head.weight": torch.randn(8, 4, generator=g)}
names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
save_file(shard1, os.path.join(OUT, "sharded", names[0]), metadata={"format": "pt"})
save_file(shard2, os.path.join(OUT, "sharded", names[1]), metadata={"format": "pt"})
weight_map = {k: names[0] for k in shard1} | {k: names[1] for k in shard2}
total = sum(t.numel() * t.element_size() for t in (shard1 | shard2).values())
with open(os.path.join(OUT, "sharded", "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
with open(os.path.join(OUT, "sharded.expected.json"), "w") as f:
    json.dump({k: as_json_values(v) for k, v in (shard1 | shard2).items()}, f)

# torch's CPU generator: the numbers @lora/tensor's Generator must reproduce
random = []
for seed in [0, 42, 2**32 + 5]:
    for n in [1, 5, 15, 16, 17, 37, 100]:
        torch.manual_seed(seed)
        u = torch.rand(n)
        torch.manual_seed(seed)
        z = torch.randn(n)
        torch.manual_seed(seed)
        w = torch.empty(n).uniform_(-0.3, 0.7)
        torch.manual_seed(seed)
        m = torch.empty(n).normal_(2.0, 0.5)
        torch.manual_seed(seed)
        z64 = torch.randn(n, dtype=torch.float64)
        random.append({"seed": seed, "n": n, "rand": u.tolist(), "randn": z.tolist(), "uniform_-0.3_0.7": w.tolist(), "normal_2_0.5": m.tolist(), "randn_float64": z64.tolist()})
# a sequence of calls on one generator: the state carries over between them
torch.manual_seed(3)
seq = [torch.rand(7).tolist(), torch.randn(20).tolist(), torch.randn(3).tolist(), torch.rand(2).tolist()]
with open(os.path.join(OUT, "torch-random.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cases": random, "sequence_seed3": seq}, f)
print("fixtures written to", os.path.abspath(OUT), "with torch", torch.__version__, file=sys.stderr)
