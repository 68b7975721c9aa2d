"""Peers of @lora/linalg's large bench (bench/large.ts), on the same matrices.

  python peers_large.py make DIR [CASES]      writes the test matrices DIR/<case>.safetensors (float32) and,
                                              for the truncated cases, the exact top-64 triplets (LAPACK, float64)
  python peers_large.py time DIR [CASES]      times the peers on them with the BLAS threads this process was
                                              started with (OPENBLAS_NUM_THREADS / torch.set_num_threads from
                                              LORA_PEER_THREADS); prints one JSON object: {case: {peer: ms}, ...}
                                              (make also writes LAPACK's singular values of each full case, DIR/<case>.lapack.json;
                                              LORA_PEER_SKIP_FULL=1: no full SVD in the truncated cases)

CASES is a comma-separated subset of: full_1024, full_1024x2816, full_2048, full_4096, full_4096x11008, trunc_4096, trunc_4096x11008,
ties_4096. Peers: numpy (LAPACK gesdd, float32 = what torch/PEFT run on float32, and float64), torch.linalg.svd,
scipy.sparse.linalg.svds (ARPACK) and torch.svd_lowrank for the truncated cases; on a CUDA machine torch on cuda.
"""
import json
import os
import sys
import time

import numpy as np

CASES = {
    "full_1024": ("gauss", 1024, 1024),
    "full_1024x2816": ("gauss", 1024, 2816),
    "full_2048": ("gauss", 2048, 2048),
    "full_4096": ("gauss", 4096, 4096),
    "full_4096x11008": ("gauss", 4096, 11008),
    "trunc_4096": ("powerlaw", 4096, 4096),
    "trunc_4096x11008": ("powerlaw", 4096, 11008),
    "ties_4096": ("ties", 4096, 4096),
}


def dct_rows(n, k, perm_seed):
    """The first k orthonormal DCT-II basis vectors of length n (k×n), their entries permuted."""
    i = np.arange(n)[None, :]
    f = np.arange(k)[:, None]
    c = np.cos(np.pi * (2 * i + 1) * f / (2 * n)) * np.sqrt(2.0 / n)
    c[0, :] = np.sqrt(1.0 / n)
    return c[:, np.random.default_rng(perm_seed).permutation(n)]


def make(kind, m, n):
    rng = np.random.default_rng(m * 7 + n)
    if kind == "gauss":
        return rng.standard_normal((m, n), dtype=np.float32)
    if kind == "powerlaw":
        # a weight-like spectrum, σᵢ = (1 + i)^-0.5, with orthogonal factors from permuted DCTs
        k = min(m, n)
        s = (1.0 + np.arange(k)) ** -0.5
        u = dct_rows(m, k, 1).T
        v = dct_rows(n, k, 2)
        return ((u * s) @ v).astype(np.float32)
    # ties: PEFT's ties() of two rank-16 updates (density 0.5), what `lora combine --type ties_svd` decomposes
    import torch
    from peft.utils.merge_utils import ties

    g = torch.Generator().manual_seed(5)
    d = [torch.randn(m, 16, generator=g) @ torch.randn(16, n, generator=g) * 0.01 for _ in range(2)]
    return ties(d, torch.tensor([0.7, 1.3]), 0.5, "total").numpy().astype(np.float32)


CPU = {}


def med(fn, runs):
    """Median wall time in ms; the process CPU time of the same run goes to CPU[id(fn)] (the machine may be shared)."""
    times = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
    wall, cpu = sorted(times)[len(times) // 2]
    CPU["last"] = cpu
    return wall


def main():
    from safetensors.numpy import load_file, save_file

    mode, d = sys.argv[1], sys.argv[2]
    chosen = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else list(CASES)
    os.makedirs(d, exist_ok=True)
    if mode == "make":
        for case in chosen:
            path = os.path.join(d, f"{case}.safetensors")
            if os.path.exists(path):
                continue
            kind, m, n = CASES[case]
            a = make(kind, m, n)
            tensors = {"a": a}
            if kind == "gauss":
                # LAPACK's singular values (float64) of the float32 matrix: the accuracy reference
                with open(os.path.join(d, f"{case}.lapack.json"), "w") as f:
                    json.dump(np.linalg.svd(a.astype(np.float64), compute_uv=False).tolist(), f)
            else:
                u, s, vh = np.linalg.svd(a.astype(np.float64), full_matrices=False)
                tensors.update({"u64": np.ascontiguousarray(u[:, :64]), "s64": s[:64].copy(), "vh64": np.ascontiguousarray(vh[:64])})
            save_file(tensors, path)
            print(f"made {case}", file=sys.stderr)
        return
    threads = int(os.environ.get("LORA_PEER_THREADS", "1"))
    import torch

    torch.set_num_threads(threads)
    out = {"numpy": np.__version__, "torch": torch.__version__, "threads": threads}
    try:
        import scipy
        from scipy.sparse.linalg import svds

        out["scipy"] = scipy.__version__
    except ImportError:
        svds = None
    cuda = torch.cuda.is_available()
    for case in chosen:
        kind, m, n = CASES[case]
        a = load_file(os.path.join(d, f"{case}.safetensors"))["a"]
        big = m * n > 2048 * 2048
        runs = 1 if big else 3
        row = {}

        def put(key, fn, n):
            row[key] = med(fn, n)
            row[f"{key} cpu"] = CPU["last"]

        if kind == "gauss":
            at = torch.from_numpy(a)
            # LORA_PEER_CPU=0: torch CUDA only (a GPU call's time is short; the CPU peers of 4096x11008 take 30 s)
            if os.environ.get("LORA_PEER_CPU", "1") != "0":
                put("numpy f32", lambda: np.linalg.svd(a, full_matrices=False), runs)
                if not big or os.environ.get("LORA_PEER_F64") == "1":
                    a64 = a.astype(np.float64)
                    put("numpy f64", lambda: np.linalg.svd(a64, full_matrices=False), runs)
                put("torch cpu", lambda: torch.linalg.svd(at, full_matrices=False), runs)
            if cuda:
                ag = at.cuda()
                torch.linalg.svd(ag, full_matrices=False)
                torch.cuda.synchronize()

                def gpu():
                    torch.linalg.svd(ag, full_matrices=False)
                    torch.cuda.synchronize()

                row["torch cuda"] = med(gpu, 3)
        else:
            at = torch.from_numpy(a)
            ref = load_file(os.path.join(d, f"{case}.safetensors"))
            # what PEFT does: the whole SVD, then the first k triplets
            if os.environ.get("LORA_PEER_SKIP_FULL") != "1":  # the full cases of the same size time it too
                put("numpy f32 full", lambda: np.linalg.svd(a, full_matrices=False), 1)
            for k in (16, 64):
                if kind == "ties" and k == 64:
                    continue
                exact = (ref["u64"][:, :k] * ref["s64"][:k]) @ ref["vh64"][:k]
                scale = np.abs(exact).max()
                if svds is not None:
                    t0, c0 = time.perf_counter(), time.process_time()
                    u, s, vh = svds(a, k=k, tol=1e-6)
                    row[f"scipy svds k{k}"] = (time.perf_counter() - t0) * 1000
                    row[f"scipy svds k{k} cpu"] = (time.process_time() - c0) * 1000
                    row[f"scipy svds k{k} err"] = float(np.abs((u * s) @ vh - exact).max() / scale)
                # torch.svd_lowrank with the same oversampling as ours and enough iterations for 1e-5, if it gets there
                for niter in (4, 16):
                    t0, c0 = time.perf_counter(), time.process_time()
                    u, s, v = torch.svd_lowrank(at, q=k + max(k, 16), niter=niter)
                    dt = (time.perf_counter() - t0) * 1000
                    row[f"torch svd_lowrank k{k} niter{niter} cpu"] = (time.process_time() - c0) * 1000
                    approx = ((u[:, :k] * s[:k]) @ v[:, :k].T).numpy()
                    row[f"torch svd_lowrank k{k} niter{niter}"] = dt
                    row[f"torch svd_lowrank k{k} niter{niter} err"] = float(np.abs(approx - exact).max() / scale)
        out[case] = row
        print(f"timed {case}: {row}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
