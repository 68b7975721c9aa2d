"""Fixtures for @lora/linalg: an accuracy battery with LAPACK's answers (numpy), torch.svd_lowrank
results on CPU, and PEFT's IncrementalPCA. Writes packages/linalg/__fixtures__/*.safetensors."""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file as _save_file


def save_file(tensors, path, metadata=None):
    """safetensors.numpy writes an array's memory as it lies: make every array C-contiguous first
    (torch often returns LAPACK factors as transposed views)."""
    _save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata=metadata)

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "linalg", "__fixtures__")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(20261128)


def with_singular_values(m, n, s):
    """A random m×n matrix with the given singular values (orthogonal factors from QR of Gaussians)."""
    k = len(s)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (u * np.asarray(s, dtype=np.float64)) @ v.T


battery = {
    "gauss_square_64": rng.standard_normal((64, 64)),
    "gauss_tall_120x40": rng.standard_normal((120, 40)),
    "gauss_tall_300x20": rng.standard_normal((300, 20)),
    "gauss_wide_30x90": rng.standard_normal((30, 90)),
    "rank_deficient_50x40_r10": rng.standard_normal((50, 10)) @ rng.standard_normal((10, 40)),
    "cond_1e6_60x50": with_singular_values(60, 50, np.logspace(0, -6, 50)),
    "cond_1e12_60x50": with_singular_values(60, 50, np.logspace(0, -12, 50)),
    "repeated_40x40": with_singular_values(40, 40, [5.0] * 10 + [2.0] * 10 + [1.0] * 20),
    "clustered_40x30": with_singular_values(40, 30, 1 + 1e-9 * np.arange(30)[::-1]),
    "zero_20x15": np.zeros((20, 15)),
    "row_1x25": rng.standard_normal((1, 25)),
    "col_25x1": rng.standard_normal((25, 1)),
    "scalar_1x1": np.array([[-3.5]]),
    "tiny_30x20": rng.standard_normal((30, 20)) * 1e-30,
    "huge_30x20": rng.standard_normal((30, 20)) * 1e30,
    "graded_30x30": np.diag(np.logspace(0, -15, 30)) @ rng.standard_normal((30, 30)),
}
tensors = {}
index = {}
for name, a in battery.items():
    s = np.linalg.svd(a, compute_uv=False)
    _, r = np.linalg.qr(a)
    tensors[f"{name}.a"] = np.ascontiguousarray(a, dtype=np.float64)
    tensors[f"{name}.s"] = s.astype(np.float64)
    tensors[f"{name}.r_absdiag"] = np.abs(np.diag(r)).astype(np.float64)
    index[name] = list(a.shape)

sym = {}
g = rng.standard_normal((50, 50))
sym["sym_gauss_50"] = (g + g.T) / 2
q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
sym["spd_cond_1e10_40"] = (q * np.logspace(0, -10, 40)) @ q.T
q30, _ = np.linalg.qr(rng.standard_normal((30, 30)))
sym["repeated_eig_30"] = (q30 * np.array([2.0] * 15 + [-1.0] * 15)) @ q30.T
sym["repeated_eig_30"] = (sym["repeated_eig_30"] + sym["repeated_eig_30"].T) / 2
sym["zero_10"] = np.zeros((10, 10))
sym["one_1"] = np.array([[4.0]])
sym["indefinite_3"] = np.array([[1.0, 2.0, 0.0], [2.0, -1.0, 3.0], [0.0, 3.0, 0.5]])
for name, a in sym.items():
    w = np.linalg.eigh(a)[0]
    tensors[f"{name}.sym"] = np.ascontiguousarray(a, dtype=np.float64)
    tensors[f"{name}.w"] = w.astype(np.float64)
save_file(tensors, os.path.join(OUT, "lapack-battery.safetensors"), metadata={"numpy": np.__version__, "matrices": json.dumps(index), "symmetric": json.dumps(sorted(sym))})

# torch.svd_lowrank on CPU float32, seeded: our Generator reproduces torch's randn, so the results
# must agree to float32 rounding.
low = {}
cases = []
for name, (m, n, rank, q, niter, seed) in {
    "exact_rank8_200x150": (200, 150, 8, 8, 2, 0),
    "exact_rank8_oversampled_200x150": (200, 150, 8, 12, 2, 1),
    "gauss_300x80_q10": (300, 80, None, 10, 2, 2),
    "gauss_60x200_q12_niter4": (60, 200, None, 12, 4, 3),
    "gauss_100x30_q40": (100, 30, None, 40, 2, 4),
    "gauss_40x40_q6_niter0": (40, 40, None, 6, 0, 5),
}.items():
    if rank is None:
        a = rng.standard_normal((m, n))
    else:
        a = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    at = torch.tensor(a, dtype=torch.float32)
    torch.manual_seed(seed)
    u, s, v = torch.svd_lowrank(at, q=q, niter=niter)
    low[f"{name}.a"] = at.numpy()
    low[f"{name}.s"] = s.numpy()
    low[f"{name}.usvt"] = (u @ torch.diag(s) @ v.T).numpy()
    cases.append({"name": name, "q": q, "niter": niter, "seed": seed, "exact_rank": rank})
save_file(low, os.path.join(OUT, "svd-lowrank.safetensors"), metadata={"torch": torch.__version__, "cases": json.dumps(cases)})

# PEFT's IncrementalPCA (EVA's), exact and low-rank, over three float32 batches.
from peft.utils.incremental_pca import IncrementalPCA  # noqa: E402
import peft  # noqa: E402

x = torch.tensor(rng.standard_normal((90, 24)) @ np.diag(np.linspace(3, 0.1, 24)) + 0.5, dtype=torch.float32)
ipca = {"x": x.numpy()}
for label, kwargs in {"exact": {}, "lowrank": {"lowrank": True, "lowrank_seed": 42}}.items():
    p = IncrementalPCA(n_components=6, **kwargs)
    for i in range(3):
        p.partial_fit(x[30 * i : 30 * (i + 1)])
        for attr in ["components_", "singular_values_", "explained_variance_", "explained_variance_ratio_", "mean_", "var_"]:
            ipca[f"{label}.{i}.{attr}"] = getattr(p, attr).double().numpy()
        ipca[f"{label}.{i}.noise_variance_"] = np.array([float(p.noise_variance_)])
save_file(ipca, os.path.join(OUT, "peft-ipca.safetensors"), metadata={"peft": peft.__version__, "torch": torch.__version__, "batches": "3x30", "n_components": "6"})
print("linalg fixtures written to", os.path.abspath(OUT), file=sys.stderr)
