"""PEFT / PyTorch peer of bench/train-gpu.ts (issue 20): the same Llamas (transformers, eager attention),
LoRA r 16, alpha 32 on all seven linear targets, AdamW (lr 1e-4, weight decay 0.01) on the adapters, float32
with TF32 off; forward + loss (no grad, the loss read back) and a training step (the loss read back), median
of runs; then float32 matmul throughput on the model's products and squares of 1024-8192. Prints one JSON object (train-gpu.ts reads it as PEER
or $OUT/peer.json).
Usage: python3 packages/cli/bench/peer_train_gpu.py [models, default 123m,10m]"""
import json
import sys
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

MODELS = {
    "123m": (dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                  tie_word_embeddings=True), 4, 512),
    "10m": (dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=8,
                 num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False),
            4, 128),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RUNS = 9

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
dev = "cuda" if torch.cuda.is_available() else "cpu"


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, runs=RUNS):
    fn()
    fn()
    sync()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1000)
    return sorted(ts)[len(ts) // 2]


out = {"device": dev, "torch": torch.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
       "gpu": torch.cuda.get_device_name() if dev == "cuda" else None}
for name in (sys.argv[1] if len(sys.argv) > 1 else "123m,10m").split(","):
    cfg, batch, seq = MODELS[name]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="eager")).to(dev)
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), device=dev)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    pm.train()  # as ours: dropout 0, so train mode changes nothing but autograd bookkeeping

    def forward():
        with torch.no_grad():
            pm(input_ids=ids, labels=ids).loss.item()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        loss.item()

    out[name] = {"forwardMs": median_ms(forward), "stepMs": median_ms(step), "batch": batch, "seq": seq,
                 "trainable": sum(p.numel() for p in pm.parameters() if p.requires_grad)}
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        out[name]["peakMiB"] = torch.cuda.max_memory_allocated() / 2**20
    del pm, model, opt
    if dev == "cuda":
        torch.cuda.empty_cache()

# the products of train-gpu.ts's MATMUL_CASES (same labels), then squares; TF32 off
CASES = [
    ("x·Wᵀ q/o 2048×1024·(1024×1024)ᵀ", (2048, 1024), (1024, 1024), False, True),
    ("x·Wᵀ k/v 2048×1024·(256×1024)ᵀ", (2048, 1024), (256, 1024), False, True),
    ("x·Wᵀ gate/up 2048×1024·(2816×1024)ᵀ", (2048, 1024), (2816, 1024), False, True),
    ("x·Wᵀ down 2048×2816·(1024×2816)ᵀ", (2048, 2816), (1024, 2816), False, True),
    ("x·Wᵀ lm_head 2048×1024·(32000×1024)ᵀ", (2048, 1024), (32000, 1024), False, True),
    ("dy·W gate/up 2048×2816·2816×1024", (2048, 2816), (2816, 1024), False, False),
    ("dy·W lm_head 2048×32000·32000×1024", (2048, 32000), (32000, 1024), False, False),
    ("q·kᵀ 16×(2048×64)·(512×64)ᵀ", (16, 2048, 64), (16, 512, 64), False, True),
    ("p·v 16×(2048×512)·(512×64)", (16, 2048, 512), (16, 512, 64), False, False),
    # LoRA's thin products (r 16)
    ("x·Aᵀ 2048×1024·(16×1024)ᵀ", (2048, 1024), (16, 1024), False, True),
    ("x·Aᵀ down 2048×2816·(16×2816)ᵀ", (2048, 2816), (16, 2816), False, True),
    ("dy·B 2048×1024·1024×16", (2048, 1024), (1024, 16), False, False),
    ("dyᵀ·h (2048×1024)ᵀ·2048×16", (2048, 1024), (2048, 16), True, False),
    ("dhᵀ·x (2048×16)ᵀ·2048×1024", (2048, 16), (2048, 1024), True, False),
] + [(f"{n}² square", (n, n), (n, n), False, False) for n in (1024, 2048, 4096, 8192)]
out["matmul"] = []
for label, sa, sb, ta, tb in CASES if dev == "cuda" else CASES[:1]:
    a = torch.randn(*sa, device=dev)
    b = torch.randn(*sb, device=dev)
    opa = (lambda x: x.transpose(-1, -2)) if ta else (lambda x: x)
    opb = (lambda x: x.transpose(-1, -2)) if tb else (lambda x: x)
    batch = sa[0] if len(sa) == 3 else 1
    m, k = (sa[-1], sa[-2]) if ta else (sa[-2], sa[-1])
    n = sb[-2] if tb else sb[-1]
    flops = 2 * batch * m * n * k
    reps = max(2, min(30, round(2e12 / flops)))
    ms = median_ms(lambda: [opa(a) @ opb(b) for _ in range(reps)], runs=3)
    out["matmul"].append({"label": label, "tflops": flops * reps / (ms / 1000) / 1e12})
    del a, b
print(json.dumps(out))
