"""PyTorch peer of bench/train-135m.ts: one LoRA training step (r 8, alpha 16, q_proj and v_proj,
AdamW) of a SmolLM-135M-shaped LlamaForCausalLM with random weights, batch 1, at the given sequence
length, on the CPU with torch's thread count (TORCH_THREADS, default 2). Prints one JSON line: the
median step time of `runs` timed steps after one warm-up, and the process's peak RSS.

usage: peer_train_135m.py CONFIG_JSON SEQ [RUNS] [ATTN]   (ATTN: sdpa, the transformers default, or eager)"""
import json
import os
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

cfg = json.loads(sys.argv[1])
seq = int(sys.argv[2])
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
attn = sys.argv[4] if len(sys.argv) > 4 else "sdpa"
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
torch.manual_seed(0)
config = LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"}, attn_implementation=attn)
model = LlamaForCausalLM(config)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, cfg["vocab_size"], (1, seq))


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return loss.item()


step()
times = []
cpu = 0.0
for _ in range(runs):
    t0 = time.perf_counter()
    c0 = time.process_time()
    step()
    cpu += time.process_time() - c0
    times.append((time.perf_counter() - t0) * 1000)
times.sort()
print(json.dumps({
    "torch": torch.__version__, "threads": torch.get_num_threads(), "attn": attn, "seq": seq,
    "stepMs": times[len(times) // 2], "cpuMs": cpu / runs * 1000, "times": times,
    "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
