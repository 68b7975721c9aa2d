"""The PEFT peer of bench/arrow-gpu.ts: routed-forward throughput of PEFT 0.21's Arrow on CUDA, float32.

The same Llama shape, batch shapes, experts (r=16 on all seven projections, random factors) and top_k as
the Node side; the router is added as create_arrow_model adds it (an `arrow_router` adapter with an
ArrowConfig naming task_0…task_{E-1}), so no adapter files are written. Also a single merged adapter
(task_0 merged into the base weights: the cost of a plain forward). Prints one JSON object on stdout.

    python3 examples/arrow-library/bench/peer_arrow.py > peer.json   (arrow-gpu.ts runs it itself with LORA_ARROW_PYTHON)
Environment: LORA_ARROW_EXPERTS (default 4,16,64), LORA_ARROW_SHAPES (default 8x256,8x1), LORA_ARROW_ITERS,
LORA_ARROW_DEVICE (default cuda; cpu to try it), LORA_ARROW_SMALL=1 (the small shape of arrow-gpu.ts),
LORA_ARROW_CLOCK=cpu (process CPU time, for one-thread CPU runs)."""
import json
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import ArrowConfig
from transformers import LlamaConfig, LlamaForCausalLM

SMALL = os.environ.get("LORA_ARROW_SMALL") == "1"
# keep in step with CONFIG in arrow-gpu.ts
CONFIG = dict(
    vocab_size=512 if SMALL else 8192, hidden_size=128 if SMALL else 1024, intermediate_size=352 if SMALL else 2816,
    num_hidden_layers=2 if SMALL else 8, num_attention_heads=4 if SMALL else 16, num_key_value_heads=2 if SMALL else 4,
    max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, TOP_K = 16, 3
EXPERTS = [int(x) for x in os.environ.get("LORA_ARROW_EXPERTS", "4,16,64").split(",")]
SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ.get("LORA_ARROW_SHAPES", "2x64,2x1" if SMALL else "8x256,8x1").split(",")]
ITERS = int(os.environ.get("LORA_ARROW_ITERS", "5" if SMALL else "20"))  # as arrow-gpu.ts

torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as tfjs computes them
dev = os.environ.get("LORA_ARROW_DEVICE", "cuda")
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**CONFIG)).to(dev).eval()


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


# LORA_ARROW_CLOCK=cpu: this process's CPU time (as arrow-gpu.ts's), for one-thread runs on a shared CPU
clock = time.process_time if os.environ.get("LORA_ARROW_CLOCK") == "cpu" else time.perf_counter


def tokens_per_s(fn, tokens, iters=ITERS):
    with torch.no_grad():
        for _ in range(2):
            fn()
        sync()
        t0 = clock()
        for _ in range(iters):
            fn()
        sync()
    return tokens * iters / (clock() - t0)


def lora(r=R):
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False)


g = torch.Generator(device=dev).manual_seed(1)
results = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)", "torch": torch.__version__, "rows": []}
ids = {s: torch.randint(0, CONFIG["vocab_size"], s, device=dev, generator=g) for s in SHAPES}
for b, t in SHAPES:
    results["rows"].append({"experts": 0, "shape": f"{b}x{t}", "mode": "base", "tokens_per_s": tokens_per_s(lambda: model(ids[(b, t)]).logits, b * t)})

for e in EXPERTS:
    pm = get_peft_model(model, lora(), adapter_name="task_0")
    for i in range(1, e):
        pm.add_adapter(f"task_{i}", lora())
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, device=dev, generator=g) * 0.05)
    cfg = ArrowConfig(top_k=min(TOP_K, e), rng_seed=0)
    cfg.task_adapter_names = [f"task_{i}" for i in range(e)]
    cfg.gks_adapter_names = []
    pm.add_adapter("arrow_router", LoraConfig(arrow_config=cfg, target_modules=TARGETS, r=R))
    pm.set_adapter("arrow_router")
    pm.eval()
    peak = 0
    for b, t in SHAPES:
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tps = tokens_per_s(lambda: pm(ids[(b, t)]).logits, b * t)
        peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
        results["rows"].append({"experts": e, "shape": f"{b}x{t}", "mode": "arrow", "tokens_per_s": tps, "peak_bytes": peak})
    pm.set_adapter("task_0")
    pm.merge_adapter()
    for b, t in SHAPES:
        tps = tokens_per_s(lambda: pm(ids[(b, t)]).logits, b * t)
        results["rows"].append({"experts": e, "shape": f"{b}x{t}", "mode": "merged", "tokens_per_s": tps})
    pm.unmerge_adapter()
    model = pm.unload()
    del pm
    if dev == "cuda":
        torch.cuda.empty_cache()
print(json.dumps(results, indent=1))
