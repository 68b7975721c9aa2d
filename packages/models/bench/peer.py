"""PyTorch peer for the @lora/models bench: the same ~10M-parameter Llama (transformers), forward and
AdamW training-step tokens/s on CPU (and CUDA where present). Prints one JSON object."""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

cfg = json.loads(sys.argv[1])
batch, seq = int(sys.argv[2]), int(sys.argv[3])
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"}, attn_implementation="eager")).to(dev)
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), device=dev)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def med(fn, runs=5):
        fn(); sync()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2] * 1000

    model.eval()
    with torch.no_grad():
        fwd = med(lambda: model(input_ids=ids).logits)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    tr = med(step)
    out[dev] = {"forwardMs": fwd, "trainMs": tr, "forwardTokS": batch * seq / fwd * 1000, "trainTokS": batch * seq / tr * 1000}
print(json.dumps(out))
