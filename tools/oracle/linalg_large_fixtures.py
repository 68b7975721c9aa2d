"""LAPACK's singular values and eigenvalues of larger test matrices for @lora/linalg's float32 backend
paths. Each matrix is defined by a closed form (Hilbert, DCT-based orthogonal factors, sines) that the
tests rebuild in JavaScript, so only the spectra are stored: packages/linalg/__fixtures__/lapack-large.json.
Keep the formulas in step with packages/linalg/src/large-matrices.test-util.ts."""
import json
import os
import sys

import numpy as np

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "linalg", "__fixtures__")


def dct(n):
    """Orthonormal DCT-II: row k is the k-th basis vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0, :] = np.sqrt(1.0 / n)
    return c


def with_spectrum(m, n, s):
    """U·diag(s)·Vᵀ with U = the first len(s) DCT vectors of length m, V = those of length n with their
    entries permuted by j -> (7j + 3) mod n."""
    k = len(s)
    u = dct(m)[:k, :].T
    perm = (7 * np.arange(n) + 3) % n
    v = dct(n)[:k, perm].T
    return (u * np.asarray(s)) @ v.T


def cases():
    n = 200
    i = np.arange(n)
    yield "hilbert_200", 1.0 / (i[:, None] + i[None, :] + 1)
    yield "graded_300", with_spectrum(300, 300, 10.0 ** (-12 * np.arange(300) / 299))
    s = np.concatenate([np.full(40, 3.0), 2 + 1e-6 * np.arange(60), np.full(60, 1.0), 0.5 ** np.arange(96)])
    yield "clustered_256", with_spectrum(256, 256, s)
    yield "rank20_300x280", with_spectrum(300, 280, np.linspace(5, 1, 20))
    yield "tall_graded_600x150", with_spectrum(600, 150, 10.0 ** (-6 * np.arange(150) / 149))
    r = np.arange(150)[:, None]
    c = np.arange(400)[None, :]
    yield "sines_150x400", np.sin(0.7 * r * c + r) + np.cos(0.3 * c) / (1 + r)


out = {"numpy": np.__version__, "matrices": {}}
for name, a in cases():
    entry = {"shape": list(a.shape), "s": np.linalg.svd(a, compute_uv=False).tolist()}
    if a.shape[0] == a.shape[1]:
        sym = (a + a.T) / 2
        entry["sym_w"] = np.linalg.eigvalsh(sym).tolist()
    out["matrices"][name] = entry
path = os.path.join(OUT, "lapack-large.json")
with open(path, "w") as f:
    json.dump(out, f, indent=None, separators=(",", ":"))
print("wrote", os.path.abspath(path), file=sys.stderr)
