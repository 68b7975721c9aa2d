"""PEFT's side of bench/combine-7b.ts: add_weighted_adapter(..., combination_type="ties_svd") on the same two
adapter directories, through a PeftModel of the adapters' module tree (its base weights left uninitialised:
the svd combination types read only the LoRA factors).

  python peer_combine.py DIR LAYERS [cpu|cuda] [COMBINATION_TYPE]

Reads DIR/a and DIR/b, keeps their first LAYERS layers (DIR/peer-L<LAYERS>/{a,b}), combines them with weights
0.7, 1.3 and density 0.5, saves PEFT's result to DIR/peer-L<LAYERS>/mix and prints one JSON line with the time.
"""
import json
import os
import shutil
import sys
import time

import peft
import torch
import torch.nn as nn
from peft import PeftModel
from safetensors.torch import load_file, save_file

d, layers = sys.argv[1], int(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
kind = sys.argv[4] if len(sys.argv) > 4 else "ties_svd"
hidden = 4096


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.utils.skip_init(nn.Linear, hidden, hidden, bias=False)
        self.v_proj = torch.nn.utils.skip_init(nn.Linear, hidden, hidden, bias=False)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attention()


class Inner(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.layers = nn.ModuleList([Layer() for _ in range(n)])


class Model(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.model = Inner(n)


root = os.path.join(d, f"peer-L{layers}")
for name in ("a", "b"):
    src = os.path.join(d, name)
    dst = os.path.join(root, name)
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "adapter_model.safetensors"))
    keep = {k: v for k, v in tensors.items() if int(k.split(".layers.")[1].split(".")[0]) < layers}
    save_file(keep, os.path.join(dst, "adapter_model.safetensors"))
    shutil.copy(os.path.join(src, "adapter_config.json"), dst)

model = Model(layers).to(device)
pm = PeftModel.from_pretrained(model, os.path.join(root, "a"), adapter_name="a")
pm.load_adapter(os.path.join(root, "b"), adapter_name="b")
if device == "cuda":
    torch.cuda.synchronize()
t0, c0 = time.perf_counter(), time.process_time()
pm.add_weighted_adapter(["a", "b"], [0.7, 1.3], "mix", combination_type=kind, density=0.5)
if device == "cuda":
    torch.cuda.synchronize()
ms = (time.perf_counter() - t0) * 1000
cpu = (time.process_time() - c0) * 1000
# how far PEFT moves from itself when only the rounding of B·A changes (B·A in float64, then rounded to
# float32): entries at the pruning cut flip, and the top svd_rank triplets with them
from peft.utils.merge_utils import ties  # noqa: E402

lm = pm.base_model.model.model.layers[0].self_attn.q_proj
deltas = [
    (lm.lora_B[n].weight.double() @ lm.lora_A[n].weight.double() * lm.scaling[n]).float() for n in ("a", "b")
]
merged = ties(deltas, torch.tensor([0.7, 1.3], device=deltas[0].device), 0.5, "total")
u, s, vh = torch.linalg.svd(merged, full_matrices=True)
again = (u[:, :16] * s[:16]) @ vh[:16]
peft_mix = lm.lora_B["mix"].weight @ lm.lora_A["mix"].weight
sensitivity = ((again - peft_mix).abs().max() / peft_mix.abs().max()).item()
pm.save_pretrained(os.path.join(root, "out"), selected_adapters=["mix"])
shutil.rmtree(os.path.join(root, "mix"), ignore_errors=True)
shutil.move(os.path.join(root, "out", "mix"), os.path.join(root, "mix"))
print(json.dumps({"ms": ms, "cpu": cpu, "sensitivity": sensitivity, "modules": 2 * layers, "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__, "peft": peft.__version__}))
