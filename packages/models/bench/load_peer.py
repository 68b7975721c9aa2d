"""Peer of bench/load.ts: transformers' from_pretrained of the same bf16 checkpoint on CPU, into
float32 (as @lora computes) or bfloat16; prints {baseMiB, peakMiB, ms, params} as load.ts does.
Usage: python load_peer.py <checkpoint dir> float32|bfloat16 [forward TOKENS REPEATS]
With `forward`: the process CPU time of a forward of [1, TOKENS] tokens (best of REPEATS after a
warm-up), printed as {cpuMs}, as load.ts's forward rows."""
import json
import resource
import sys
import time

import torch
from transformers import LlamaForCausalLM


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


directory, dtype = sys.argv[1], sys.argv[2]
base = rss_mib()
t0 = time.perf_counter()
model = LlamaForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype))
ms = (time.perf_counter() - t0) * 1000
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
params = sum(p.numel() for p in model.parameters())
if len(sys.argv) > 3 and sys.argv[3] == "forward":
    tokens, repeats = int(sys.argv[4]), int(sys.argv[5])
    ids = torch.tensor([[(i * 7919) % 49152 for i in range(tokens)]])
    model.eval()
    times = []
    with torch.no_grad():
        model(ids)  # warm-up
        for _ in range(repeats):
            c0 = time.process_time()
            model(ids).logits.float().numpy()
            times.append((time.process_time() - c0) * 1000)
    print(json.dumps({"cpuMs": min(times), "threads": torch.get_num_threads()}))
    sys.exit(0)
print(json.dumps({"baseMiB": base, "peakMiB": peak, "ms": ms, "params": params}))
