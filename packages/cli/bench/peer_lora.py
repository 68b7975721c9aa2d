"""PEFT peer for the LoRA-overhead part of `npm run bench -w @lora/cli`: the same ~10M Llama (transformers),
forward (with labels, logits read back, as the @lora bench) with LoRA adapters disabled and enabled (alternating, median), and an AdamW step on all weights
against one on the adapters only (r 16, alpha 32 on q/k/v/o_proj), on CUDA where present, else CPU.
Usage: python packages/cli/bench/peer_lora.py   (prints one JSON object)"""
import json
import time

import peft
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5)
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="eager")).to(dev)
ids = torch.randint(0, CONFIG["vocab_size"], (4, 128), device=dev)


def forward(m):
    # the same work as the @lora bench's forward: logits and the loss, the logits read back to the host
    return m(input_ids=ids, labels=ids).logits.cpu()


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1000


def med(ts):
    return sorted(ts)[len(ts) // 2]


def train_step(m, opt):
    opt.zero_grad()
    m(input_ids=ids, labels=ids).loss.backward()
    opt.step()


full_opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
model.train()
train_step(model, full_opt)
full = med([timed(lambda: train_step(model, full_opt)) for _ in range(5)])
pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
pm.eval()
fwd = {"bare": [], "lora": []}
with torch.no_grad():
    for i in range(8):
        with pm.disable_adapter():
            t = timed(lambda: forward(pm))
        if i:
            fwd["bare"].append(t)
        t = timed(lambda: forward(pm))
        if i:
            fwd["lora"].append(t)
pm.train()
lora_opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
train_step(pm, lora_opt)
lora = med([timed(lambda: train_step(pm, lora_opt)) for _ in range(5)])
print(json.dumps({"device": dev, "torch": torch.__version__, "peft": peft.__version__, "forwardBareMs": med(fwd["bare"]),
                  "forwardLoraMs": med(fwd["lora"]), "trainAllMs": full, "trainLoraMs": lora}))
