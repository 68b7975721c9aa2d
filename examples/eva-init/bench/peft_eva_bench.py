"""The PEFT side of the EVA benchmark (examples/eva-init/bench/README.md), and the table of both.

    python3 peft_eva_bench.py make DIR   # a 123M-parameter Llama (random, seeded) + 8 batches of 4×512 token ids
    python3 peft_eva_bench.py run DIR    # PEFT 0.21's initialize_lora_eva_weights on CUDA (CPU if none), timed
    python3 peft_eva_bench.py table DIR  # PEFT against ours (DIR/ours-*.json, written by eva-bench.js)

Both sides read the same checkpoint and batches, use the same LoRA/EVA settings (DIR/settings.json), and
time the whole EVA call (the data pass and the re-initialisation) after one warm-up forward."""
import json
import os
import sys
import time

import torch

SETTINGS = {
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "eva_config": {"rho": 2.0, "tau": 0.99},
    "batches": 8,
    "batch_size": 4,
    "seq_len": 512,
}
# 123.5M parameters: 12 layers of hidden 768 (12 heads), MLP 2560, a 32000-token vocabulary, tied embeddings
CONFIG = dict(vocab_size=32000, hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12,
              num_key_value_heads=12, max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
              initializer_range=0.02, bos_token_id=1, eos_token_id=2)
if os.environ.get("EVA_BENCH_SMALL"):  # a quick local check of the scripts, not the benchmark
    CONFIG.update(vocab_size=1000, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    SETTINGS.update(seq_len=64, r=8)


def make(d):
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(d, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(os.path.join(d, "model"))
    # token ids with a Zipf-like distribution over the vocabulary (text-like frequencies), fixed seed
    g = torch.Generator().manual_seed(1)
    weights = 1.0 / torch.arange(1, CONFIG["vocab_size"] + 1, dtype=torch.float64) ** 1.1
    batches = {}
    for i in range(SETTINGS["batches"]):
        ids = torch.multinomial(weights, SETTINGS["batch_size"] * SETTINGS["seq_len"], replacement=True, generator=g)
        batches[f"input_ids.{i}"] = ids.reshape(SETTINGS["batch_size"], SETTINGS["seq_len"]).to(torch.int32)
        batches[f"attention_mask.{i}"] = torch.ones(SETTINGS["batch_size"], SETTINGS["seq_len"], dtype=torch.int32)
    save_file(batches, os.path.join(d, "batches.safetensors"))
    with open(os.path.join(d, "settings.json"), "w") as f:
        json.dump({**SETTINGS, "parameters": n}, f, indent=1)
    print(f"made {d}: Llama with {n / 1e6:.1f}M parameters, {SETTINGS['batches']} batches of {SETTINGS['batch_size']}x{SETTINGS['seq_len']}")


def run(d):
    if os.environ.get("PEFT_THREADS"):
        torch.set_num_threads(int(os.environ["PEFT_THREADS"]))
    import peft
    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    s = json.load(open(os.path.join(d, "settings.json")))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM.from_pretrained(os.path.join(d, "model"), torch_dtype=torch.float32).to(device).eval()
    t = load_file(os.path.join(d, "batches.safetensors"))
    batches = [{"input_ids": t[f"input_ids.{i}"].long().to(device), "attention_mask": t[f"attention_mask.{i}"].long().to(device)}
               for i in range(s["batches"])]
    with torch.no_grad():
        model(**batches[0])  # warm-up: CUDA context and kernels
    config = LoraConfig(r=s["r"], lora_alpha=s["lora_alpha"], target_modules=s["target_modules"], init_lora_weights="eva",
                        eva_config=EvaConfig(**s["eva_config"]))
    pm = get_peft_model(model, config, low_cpu_mem_usage=True)
    forwards = [0]
    # PEFT cycles the batches until every layer converged, with no cap: stop it after a time limit
    limit = float(os.environ.get("PEFT_TIME_LIMIT", "240"))
    # or after a number of batches (EVA_BENCH_STEPS: both sides time the same first batches)
    max_steps = int(os.environ.get("EVA_BENCH_STEPS", "0"))

    class TimeLimit(Exception):
        pass

    def count(*_):
        forwards[0] += 1
        if time.perf_counter() - t0 > limit or (max_steps and forwards[0] > max_steps + 1):
            raise TimeLimit()

    pm.base_model.model.register_forward_pre_hook(count)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    c0 = time.process_time()
    finished = True
    try:
        initialize_lora_eva_weights(pm, batches, show_progress_bar=False)
    except TimeLimit:
        finished = False
        forwards[0] -= 1
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    ranks = {n.replace("base_model.model.", ""): m.r["default"] for n, m in pm.named_modules() if hasattr(m, "r") and "default" in getattr(m, "r", {})}
    # PEFT's loop runs one forward to find equal inputs, then one per batch used
    out = {"impl": "PEFT " + peft.__version__, "backend": f"torch {torch.__version__} {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""),
           "seconds": seconds, "forwards": forwards[0], "steps": forwards[0] - 1, "finished": finished,
           "cpuSeconds": cpu_seconds, "threads": torch.get_num_threads(), "ranks": ranks if finished else {}}
    with open(os.path.join(d, "peft.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "ranks"}))


def table(d):
    rows = []
    peft_row = json.load(open(os.path.join(d, "peft.json"))) if os.path.exists(os.path.join(d, "peft.json")) else None
    if peft_row:
        rows.append(peft_row)
    for f in sorted(os.listdir(d)):
        if f.startswith("ours-") and f.endswith(".json"):
            rows.append(json.load(open(os.path.join(d, f))))
    s = json.load(open(os.path.join(d, "settings.json")))
    print(f"\nEVA on a {s['parameters'] / 1e6:.1f}M-parameter Llama, {s['batches']} batches of {s['batch_size']}x{s['seq_len']}, "
          f"r={s['r']} rho={s['eva_config']['rho']} tau={s['eva_config']['tau']} on {','.join(s['target_modules'])}\n")
    print("| implementation | backend | seconds | CPU seconds | batches used | s / batch | time / PEFT's | s per batch / PEFT's | ranks as PEFT's |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    per_batch = lambda r: r["seconds"] / max(1, r.get("steps", 0))
    peft_done = bool(peft_row and peft_row.get("finished", True))
    for r in rows:
        done = r.get("finished", True)
        same = "-"
        if peft_row and r is not peft_row and r.get("ranks") and peft_row.get("ranks"):
            same = f"{sum(r['ranks'].get(k) == v for k, v in peft_row['ranks'].items())}/{len(peft_row['ranks'])}"
        ratio = "-"
        if peft_row and r is not peft_row and done:
            ratio = f"{r['seconds'] / peft_row['seconds']:.3f}" if peft_done else f"< {r['seconds'] / peft_row['seconds']:.3f}"
        elif r is peft_row:
            ratio = "1"
        per_ratio = f"{per_batch(r) / per_batch(peft_row):.3f}" if peft_row else "-"
        secs = f"{r['seconds']:.1f}" + ("" if done else " (stopped)")
        cpu = f"{r['cpuSeconds']:.1f}" if "cpuSeconds" in r else "-"
        print(f"| {r['impl']} | {r['backend']} | {secs} | {cpu} | {r.get('steps', 0)} | {per_batch(r):.3f} | {ratio} | {per_ratio} | {same} |")
    for r in rows:
        if not r.get("finished", True):
            print(f"\n{r['impl']} on {r['backend']} was stopped at its time or batch limit ({r['seconds']:.0f} s, {r.get('steps', 0)} batches used).")


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    {"make": make, "run": run, "table": table}[cmd](d)
