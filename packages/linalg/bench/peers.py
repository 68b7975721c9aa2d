"""Peer timings for the @lora/linalg bench: numpy/LAPACK (single-threaded) and, when present, torch
(CPU, and CUDA where there is a GPU). Prints one JSON object {row name: ms}."""
import json
import os
import sys
import time

import numpy as np


def med(fn, budget=3.0, max_runs=7):
    fn()
    runs = []
    start = time.perf_counter()
    while len(runs) < max_runs and (len(runs) < 3 or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return sorted(runs)[len(runs) // 2]


rng = np.random.default_rng(0)
out = {}
only = sys.argv[1] if len(sys.argv) > 1 else ""
if only != "gpu":
    for m, n in [(256, 256), (512, 512), (1024, 1024), (512, 4096)]:
        a = rng.standard_normal((m, n))
        out[f"thin SVD {m}×{n}"] = med(lambda: np.linalg.svd(a, full_matrices=False))
    t = rng.standard_normal((4096, 64))
    out["QR 4096×64"] = med(lambda: np.linalg.qr(t))
    g = rng.standard_normal((512, 512))
    s = (g + g.T) / 2
    out["eigh 512×512"] = med(lambda: np.linalg.eigh(s))
try:
    import torch

    for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        n, r = 4096, 16
        a = (torch.randn(n, r, device=dev) @ torch.randn(r, n, device=dev) + 1e-3 * torch.randn(n, n, device=dev)).float()

        def run():
            u, s, v = torch.svd_lowrank(a, q=r, niter=2)
            s.cpu()

        out[f"svdLowRank rank 16 of 4096² torch {dev}"] = med(run, max_runs=9)
    out["torch"] = torch.__version__
except ImportError:
    pass
out["numpy"] = np.__version__
out["threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
print(json.dumps(out))
