"""Reads packages/tensor/__fixtures__/js-written.safetensors (written by @lora/tensor's
serializeSafetensors) with Python's safetensors and checks every tensor against the values the
JS test gave it. Exit status 0 when Python sees exactly what JS meant to write."""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "tensor", "__fixtures__", "js-written.safetensors")
f32 = torch.float32
want = {
    "weight": torch.tensor([[0.5, -1.25, 3.0e-8], [1e20, -0.0, 7.0]], dtype=f32),
    "half": torch.tensor([1, -2.5, 65504, 0.1], dtype=f32).to(torch.float16),
    "brain": torch.tensor([1, -2.5, 0.1], dtype=f32).to(torch.bfloat16),
    "ints": torch.tensor([1, -2, 2147483647], dtype=torch.int32),
    "long": torch.tensor([-2147483648, 42], dtype=torch.int64),
    "flags": torch.tensor([True, False]),
}
got = load_file(PATH)
with safe_open(PATH, "pt") as f:
    meta = f.metadata()
ok = meta == {"format": "pt", "writer": "@lora/tensor"}
print(f"metadata {meta}: {'ok' if ok else 'MISMATCH'}")
for name, w in want.items():
    g = got.get(name)
    same = g is not None and g.dtype == w.dtype and g.shape == w.shape and torch.equal(g.view(-1).view(torch.uint8) if g.dtype != torch.bool else g, w.view(-1).view(torch.uint8) if w.dtype != torch.bool else w)
    print(f"{name}: {None if g is None else (g.dtype, tuple(g.shape))} {'ok' if same else 'MISMATCH'}")
    ok = ok and same
extra = set(got) - set(want)
if extra:
    print("unexpected tensors:", extra)
    ok = False
print("python reads @lora/tensor's file identically:", ok, "(torch", torch.__version__ + ")")
sys.exit(0 if ok else 1)
