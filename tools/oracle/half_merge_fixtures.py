"""PEFT LoRA merged into a bf16 Llama (the tiny bf16 checkpoint of the Hub-cache fixture): the merged
weights stay bf16, rounded as PEFT rounds them (a Linear's plain merge adds the float32 ΔW to the bf16
weight; a safe merge and an embedding's merge round ΔW to bf16 first). Writes
packages/models/__fixtures__/half-merge/: the adapter (PEFT's files) and the merged models' weights,
bit for bit, for @lora/cli's half-base test."""
import glob
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from oracle_common import save_adapter

HERE = os.path.dirname(__file__)
SNAP = glob.glob(os.path.join(HERE, "..", "..", "packages", "tensor", "__fixtures__", "hf-cache", "models--lora-test--tiny-llama-bf16", "snapshots", "*"))[0]
OUT = os.path.join(HERE, "..", "..", "packages", "models", "__fixtures__", "half-merge")


def load():
    model = LlamaForCausalLM.from_pretrained(SNAP, dtype=torch.bfloat16)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    # the Hub id the snapshot stands for, not this machine's path, goes into adapter_config.json
    model.name_or_path = "lora-test/tiny-llama-bf16"
    return model


config = LoraConfig(
    r=4,
    lora_alpha=32,
    target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
    init_lora_weights=False,  # random B too, so that ΔW is not zero
)
torch.manual_seed(0)
peft = get_peft_model(load(), config)
# PEFT upcasts the adapter to float32 over a bf16 base (autocast_adapter_dtype)
assert peft.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
save_adapter(peft, os.path.join(OUT, "adapter"))
adapter_state = {n: p.detach().clone() for n, p in peft.named_parameters() if "lora_" in n}

ids = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 7]])
out = {"input_ids": ids.to(torch.int32)}
with torch.no_grad():
    out["peft.logits"] = peft(ids).logits.float()

for safe in (False, True):
    torch.manual_seed(0)
    again = get_peft_model(load(), config)
    with torch.no_grad():
        for n, p in again.named_parameters():
            if "lora_" in n:
                p.copy_(adapter_state[n])
    merged = again.merge_and_unload(safe_merge=safe)
    tag = "safe" if safe else "plain"
    for n, p in merged.state_dict().items():
        assert p.dtype == torch.bfloat16, (n, p.dtype)
        out[f"{tag}.{n}"] = p.detach().clone().contiguous()
    with torch.no_grad():
        out[f"{tag}.logits"] = merged(ids).logits.float()

base = load()
for n, p in base.state_dict().items():
    out[f"base.{n}"] = p.detach().clone().contiguous()
save_file(out, os.path.join(OUT, "merged.safetensors"))
changed = sum(int((out[f"plain.{n}"] != out[f"base.{n}"]).any()) for n in base.state_dict())
differ = sum(int((out[f"plain.{n}"] != out[f"safe.{n}"]).any()) for n in base.state_dict())
print(f"wrote {OUT}: {changed} merged tensors changed by the merge, {differ} differ between plain and safe merge")
