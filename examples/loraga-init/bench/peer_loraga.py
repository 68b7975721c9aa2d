"""The peer of bench/loraga-gpu.ts: PEFT 0.21's preprocess_loraga (8 forward/backward passes of 4 x 512
tokens) and get_peft_model (lora_ga_init on every projection) on the same 123M Llama shapes, float32, on
CUDA (or --device cpu). Prints one JSON line: seconds, and torch's peak allocated / reserved memory."""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraGAConfig, preprocess_loraga
from transformers import LlamaConfig, LlamaForCausalLM

MODELS = {
    "123m": (dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True), 4, 512, 8),
    "tiny": (dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True), 2, 24, 3),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="123m")
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
a = ap.parse_args()
cfg, batch, seq, n = MODELS[a.model]
dev = torch.device(a.device)
cuda = dev.type == "cuda"
MiB = 2**20


def sync():
    if cuda:
        torch.cuda.synchronize()


torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**cfg)).to(dev)
g = torch.Generator().manual_seed(1)
batches = [torch.randint(0, cfg["vocab_size"], (batch, seq), generator=g).to(dev) for _ in range(n)]
lcfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())
weights = sum(p.numel() for p in model.parameters()) * 4

# warm-up (cuBLAS / kernels), not timed: one forward/backward pass
model(input_ids=batches[0], labels=batches[0]).loss.backward()
model.zero_grad(set_to_none=True)
sync()
if cuda:
    torch.cuda.reset_peak_memory_stats()
losses = []


def train_step():
    for b in batches:
        loss = model(input_ids=b, labels=b).loss
        loss.backward()
        losses.append(loss.item())


t0 = time.perf_counter()
preprocess_loraga(model, lcfg, train_step)
sync()
t1 = time.perf_counter()
torch.manual_seed(0)
pm = get_peft_model(model, lcfg)
sync()
t2 = time.perf_counter()
out = {
    "who": f"PEFT {__import__('peft').__version__}, torch {torch.__version__} {a.device}",
    "estimateS": t1 - t0,
    "initS": t2 - t1,
    "totalS": t2 - t0,
    "peakGpuMiB": torch.cuda.max_memory_reserved() / MiB if cuda else None,
    "peakLiveMiB": torch.cuda.max_memory_allocated() / MiB if cuda else None,
    "weightsMiB": weights / MiB,
    "firstLoss": losses[0],
    "targets": sum(1 for _, m in pm.named_modules() if hasattr(m, "lora_A")),
}
print(json.dumps(out))
