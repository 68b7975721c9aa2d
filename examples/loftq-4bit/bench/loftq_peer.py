"""The PyTorch peer of bench/loftq-bench.js: the same work on the same 4096 x 4096 weight, on CUDA when
there is one (else CPU), printed as one JSON object.

- NF4 quantize + dequantize: bitsandbytes' NF4 spelled out in torch (blocks of 64, fp32 absmax, the kernel's
  thresholds, as tools/oracle/loftq_fixtures.py), vectorised.
- loftq_init at 4 bits, r 16, 1 and 5 steps, with (a) torch.svd_lowrank(q=32, niter=4), the SVD our bench uses
  for a 4096² weight, and (b) torch.linalg.svd, PEFT 0.21's own (full SVD of every residual).
Each case: median of 3 timed runs after a warm-up (wall and process CPU ms), with torch.cuda.synchronize(), and the relative error
||W - Q - B·A|| / ||W|| it reached. Usage: python3 loftq_peer.py [N]
"""

import json
import math
import sys
import time

import torch

N = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
R = 16
device = "cuda" if torch.cuda.is_available() else "cpu"

NF4 = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
     -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
     0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0],
    dtype=torch.float32, device=device,
)
TREE = torch.tensor(
    [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
     -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
     0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011],
    dtype=torch.float32, device=device,
)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def fake_nf4(w):
    """dequantize(quantize(w)) with bitsandbytes' NF4 (blocks of 64; N² is a multiple of 64)."""
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1)
    xn = blocks * (1.0 / absmax)[:, None]
    codes = torch.bucketize(xn, TREE)  # the number of thresholds below: the kernel's tree, ties to the lower code
    return (NF4[codes] * absmax[:, None]).reshape(w.shape)


def low_rank(e, method):
    if method == "full":
        U, S, Vh = torch.linalg.svd(e, full_matrices=False)
        U, S, Vh = U[:, :R], S[:R], Vh[:R]
    else:
        U, S, V = torch.svd_lowrank(e, q=2 * R, niter=4)
        U, S, Vh = U[:, :R], S[:R], V[:, :R].T
    s = torch.sqrt(S)
    return U * s, s[:, None] * Vh


def loftq(w, steps, method):
    res = w
    for i in range(steps):
        q = fake_nf4(res)
        L, Rm = low_rank(w - q, method)
        if i + 1 < steps:
            res = w - L @ Rm
    return q, L, Rm


def timed(fn, runs=3, warmup=True):
    """Median wall ms of `runs` runs (after a warm-up unless told), that run's process CPU ms, the last result."""
    if warmup:
        fn()
        sync()
    out = []
    result = None
    for _ in range(runs):
        c = time.process_time()
        t = time.perf_counter()
        result = fn()
        sync()
        out.append(((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000))
    out.sort()
    return out[len(out) // 2], result


def main():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(N, N, generator=g) * 0.02).to(device)
    norm = float(torch.linalg.norm(w))
    rows = {}
    (ms, cpu), q = timed(lambda: fake_nf4(w))
    rows["nf4"] = {"ms": ms, "cpuMs": cpu, "error": float(torch.linalg.norm(w - q)) / norm}
    for steps in (1, 5):
        for method in ("lowrank", "full"):
            # a full SVD of 4096² takes tens of seconds on a CPU: one run, no warm-up, there
            slow = method == "full" and device != "cuda"
            (ms, cpu), (q, L, Rm) = timed(lambda: loftq(w, steps, method), 1 if slow else 3, warmup=not slow)
            rows[f"loftq-t{steps}-{method}"] = {"ms": ms, "cpuMs": cpu, "error": float(torch.linalg.norm(w - q - L @ Rm)) / norm}
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(json.dumps({"peer": f"torch {torch.__version__} {device}", "device": name, "n": N, "rank": R, "rows": rows}))


if __name__ == "__main__":
    main()
