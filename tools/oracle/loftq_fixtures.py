"""LoftQ fixtures for @lora/loftq: bitsandbytes' NF4 and vectorwise int8 spelled out in torch, the LoftQ
authors' normal-float quantizer (2, 3, 4 bits), and PEFT 0.21's `loftq_init` / `LoraLayer.loftq_init` run
with those quantizers in place of bitsandbytes (which needs CUDA and is not installed here).

What is spelled out, and from where:
- NF4 (bitsandbytes `csrc/kernels.cu`, `kQuantizeBlockwise<…, NF4>` and `dQuantizeNF4`, the kernel PEFT's
  `Params4bit(...).to("cuda")` runs): the weight flattened row-major, blocks of `blocksize` (64) with a
  shorter last block; `absmax` = max|x| of the block (fp32); `xn = x * (1 / absmax)` in fp32; the code is
  the leaf of a binary decision tree over 15 float32 thresholds with strict `>` (so xn exactly on a
  threshold takes the lower code; NaN, from an all-zero block, takes code 0); two codes a byte, the
  first in the high nibble, an odd count padded with the code of 0. Dequantize: `NF4[code] * absmax`.
  The kernel is compiled with --use_fast_math, so CUDA's reciprocal is the approximate one; this oracle
  uses IEEE 1/absmax (what the CPU and our code compute).
- int8 (bitsandbytes `int8_vectorwise_quant`, what `Int8Params` runs; PEFT's `loftq_bits=8`): per row
  `SCB = max|x|`, `q = round_half_even(x * (127 / SCB))`; dequantize `q * SCB * 7.874015718698502e-3`.
  `Int8Params` casts the weight to float16 first (`float16_input` below), and PEFT's LoftQ goes through it.
- NFQuantizer (yxli2123/LoftQ, PEFT <= 0.19 `loftq_utils.NFQuantizer`, method "normal"): code book from
  `create_normal_map(offset=0.9677083, symmetric=False, num_bits)`; per block of 64 `max|x|`, `x / max`,
  `argmin |xn - code|` (first index on ties); `8 // bits` codes a byte, least significant first.

Run: .venv-oracle/bin/python tools/oracle/loftq_fixtures.py  (writes packages/loftq/__fixtures__/)
"""

import json
import math
import os

import numpy as np
import torch
from safetensors.torch import save_file
from scipy.stats import norm

from loftq_net import LoftqNet

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "loftq", "__fixtures__")

# bitsandbytes' NF4 code book (bitsandbytes/functional.py get_4bit_type("nf4"), kernels.cu nf4_dequantization_lut)
NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float32,
)

# the thresholds of dQuantizeNF4's decision tree (float literals with the `f` suffix: float32), ascending
NF4_TREE = torch.tensor(
    [
        -0.8480964004993439,
        -0.6106329262256622,
        -0.4599952697753906,
        -0.33967943489551544,
        -0.23460740596055984,
        -0.13791173323988914,
        -0.045525018125772476,
        0.03979014977812767,
        0.1202552504837513,
        0.2035212516784668,
        0.2920137718319893,
        0.3893125355243683,
        0.5016634166240692,
        0.6427869200706482,
        0.8614784181118011,
    ],
    dtype=torch.float32,
)


def nf4_tree_scalar(x):
    """dQuantizeNF4 as written in kernels.cu (x a float32 value as a Python float)."""
    t = [float(v) for v in NF4_TREE]
    if x > t[7]:
        if x > t[11]:
            if x > t[13]:
                return 15 if x > t[14] else 14
            return 13 if x > t[12] else 12
        if x > t[9]:
            return 11 if x > t[10] else 10
        return 9 if x > t[8] else 8
    if x > t[3]:
        if x > t[5]:
            return 7 if x > t[6] else 6
        return 5 if x > t[4] else 4
    if x > t[1]:
        return 3 if x > t[2] else 2
    return 1 if x > t[0] else 0


# ---------------------------------------------------------------------------------------------------
# deterministic inputs (peft-lora-utilities.md §7): a 32-bit LCG


def lcg(seed):
    state = seed & 0xFFFFFFFF
    while True:
        state = (1664525 * state + 1013904223) & 0xFFFFFFFF
        yield state / 2**32


def mat(rows, cols, seed, scale):
    g = lcg(seed)
    return torch.tensor([[scale * (2 * next(g) - 1) for _ in range(cols)] for _ in range(rows)], dtype=torch.float64).float()


def gmat(rows, cols, seed, scale):
    g = lcg(seed)
    out = []
    for _ in range(rows):
        row = []
        for _ in range(cols):
            s = next(g) + next(g) + next(g) + next(g)
            row.append(scale * (s - 2) * math.sqrt(3))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).float()


def lapmat(rows, cols, seed, scale):
    """Laplace-distributed entries (heavy tails, as trained weights have): -scale·sign(u-½)·ln(1 - 2|u-½|)."""
    g = lcg(seed)
    out = []
    for _ in range(rows):
        row = []
        for _ in range(cols):
            d = next(g) - 0.5
            row.append(-scale * math.copysign(1.0, d) * math.log(max(1 - 2 * abs(d), 2**-32)))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).float()


# ---------------------------------------------------------------------------------------------------
# the quantizers


def nf4_quantize(w, blocksize=64):
    """bitsandbytes NF4 (CUDA kernel semantics, IEEE reciprocal): (packed uint8, absmax fp32, codes)."""
    flat = w.reshape(-1).float()
    n = flat.numel()
    nblocks = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nblocks * blocksize, dtype=torch.float32)
    padded[:n] = flat
    blocks = padded.view(nblocks, blocksize)
    absmax = blocks.abs().max(dim=1).values  # the zero padding never raises a max of |x|
    inv = torch.tensor(1.0, dtype=torch.float32) / absmax  # fp32 division; inf for an all-zero block
    xn = blocks * inv[:, None]  # fp32; 0 * inf = NaN
    codes = (xn[..., None] > NF4_TREE).sum(-1).reshape(-1)  # the tree is a search over sorted thresholds
    codes = codes[: n + (n % 2)].to(torch.uint8)  # an odd count keeps the padded value's code
    packed = (codes[0::2] << 4) | codes[1::2]
    return packed, absmax, codes[:n]


def nf4_dequantize(packed, absmax, n, blocksize=64):
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n].long()
    values = NF4[codes]
    return values * absmax.repeat_interleave(blocksize)[:n]


def f16_round(w):
    return w.half().float()


def int8_quantize(w, float16_input=False):
    """bitsandbytes int8_vectorwise_quant (threshold 0): (int8 codes, row absmax SCB)."""
    x = f16_round(w) if float16_input else w.float()
    scb = x.abs().max(dim=1).values
    scale = torch.tensor(127.0, dtype=torch.float32) / scb
    q = torch.round(x * scale[:, None])
    q = torch.where(scb[:, None] == 0, torch.zeros_like(q), q)  # a zero row: 0 * inf = NaN; its codes are 0
    return q.to(torch.int8), scb


def int8_dequantize(q, scb):
    return q.float() * scb[:, None] * 7.874015718698502e-3


def create_normal_map(num_bits, offset=0.9677083):
    """The LoftQ authors' NFQuantizer.create_normal_map(symmetric=False): float32, as they compute it."""
    variations = 2**num_bits
    v1 = norm.ppf(torch.linspace(offset, 0.5, variations // 2 + 1)[:-1]).tolist()
    v3 = (-norm.ppf(torch.linspace(offset, 0.5, variations // 2)[:-1])).tolist()
    values = torch.Tensor(v1 + [0] + v3)
    values = values.sort().values
    values /= values.max()
    return values


def nf_quantize(w, num_bits, blocksize=64):
    """NFQuantizer.quantize_block (method "normal"): (packed uint8, block max fp32, codes)."""
    book = create_normal_map(num_bits)
    flat = w.reshape(-1).float()
    blocks = flat.reshape(-1, blocksize)
    wmax = blocks.abs().max(dim=-1).values
    xn = blocks / wmax[:, None]
    codes = torch.argmin((xn[..., None] - book).abs(), dim=-1).reshape(-1)
    per = 8 // num_bits
    grouped = codes.reshape(-1, per)
    packed = torch.zeros(grouped.shape[0], dtype=torch.uint8)
    for i in range(per):
        packed |= (grouped[:, i] << (i * num_bits)).to(torch.uint8)
    return packed, wmax, codes.to(torch.uint8), book


def nf_dequantize(codes, wmax, num_bits, blocksize=64):
    book = create_normal_map(num_bits)
    return (book[codes.long()].reshape(-1, blocksize) * wmax[:, None]).reshape(-1)


def fake_quant(w, num_bits):
    """dequantize(quantize(w)) as PEFT's loftq_init does for each bit width (2 and 3: the NFQuantizer)."""
    if num_bits == 4:
        packed, absmax, _ = nf4_quantize(w)
        return nf4_dequantize(packed, absmax, w.numel()).reshape(w.shape)
    if num_bits == 8:
        q, scb = int8_quantize(w, float16_input=True)  # Int8Params casts to float16
        return int8_dequantize(q, scb)
    packed, wmax, codes, _ = nf_quantize(w, num_bits)
    return nf_dequantize(codes, wmax, num_bits).reshape(w.shape)


def low_rank_decomposition(weight, reduced_rank):
    """PEFT's _low_rank_decomposition: the full SVD, √S into each factor."""
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    L = U @ (torch.sqrt(torch.diag(S)[:, 0:reduced_rank]))
    R = torch.sqrt(torch.diag(S)[0:reduced_rank, :]) @ Vh
    return L, R


def loftq_init(weight, num_bits, reduced_rank, num_iter=1, errors=None):
    """PEFT 0.21's loftq_init, line for line, with the spelled-out quantizers; `errors` collects
    ||W - Q_i - L_i R_i||_F / ||W||_F after each iteration."""
    dtype = weight.dtype
    weight = weight.to(torch.float32)
    res = weight.clone()
    for i in range(num_iter):
        dequantized_weight = fake_quant(res, num_bits)
        res = weight - dequantized_weight
        L, R = low_rank_decomposition(res, reduced_rank)
        if errors is not None:
            errors.append(float(torch.linalg.norm(weight - dequantized_weight - L @ R) / torch.linalg.norm(weight)))
        if i + 1 == num_iter:
            break
        res = weight - torch.mm(L, R)
    return dequantized_weight.to(dtype), R, L


# ---------------------------------------------------------------------------------------------------


def edge_block():
    """A block with absmax exactly 1 (so xn = x): every NF4 threshold, its float32 neighbours, the codes
    and their NF midpoints, 0 and -0."""
    vals = [1.0, -1.0, 0.0, -0.0]
    for t in NF4_TREE.tolist():
        t32 = np.float32(t)
        vals += [float(t32), float(np.nextafter(t32, np.float32(2))), float(np.nextafter(t32, np.float32(-2)))]
    vals += NF4.tolist()
    return torch.tensor(vals, dtype=torch.float32)


def nf_edge_block(book):
    """absmax 1: the code book, its float32 midpoints and their neighbours (argmin ties)."""
    vals = [1.0, -1.0, 0.0]
    b = book.tolist()
    for lo, hi in zip(b[:-1], b[1:]):
        mid = np.float32((np.float32(lo) + np.float32(hi)) / np.float32(2))
        vals += [float(mid), float(np.nextafter(mid, np.float32(2))), float(np.nextafter(mid, np.float32(-2)))]
    vals += b
    out = torch.zeros(64 * ((len(vals) + 63) // 64), dtype=torch.float32)
    out[: len(vals)] = torch.tensor(vals)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    notes = {}

    # the tree is the count of thresholds below x (what a vectorised quantizer computes)
    probe = [float(v) for v in edge_block()] + [float(x) for x in torch.linspace(-1.2, 1.2, 20001)]
    count = ((torch.tensor(probe, dtype=torch.float32)[:, None] > NF4_TREE).sum(-1)).tolist()
    assert all(nf4_tree_scalar(float(np.float32(x))) == c for x, c in zip(probe, count)), "tree != count"
    mids = ((NF4[:-1] + NF4[1:]) / 2).tolist()
    notes["nf4_tree_vs_fp32_midpoints"] = [
        {"i": i, "tree": float(t), "midpoint": float(m)} for i, (t, m) in enumerate(zip(NF4_TREE.tolist(), mids)) if np.float32(t) != np.float32(m)
    ]

    # --- NF4 (bitsandbytes) -------------------------------------------------------------------------
    golden = mat(1, 64, 7, 1.0)
    cases = {
        "spec": gmat(64, 128, 71, 0.02),  # the reference's W (§7.4)
        "golden": golden,
        "odd": mat(7, 13, 5, 0.3),  # 91 values: a partial last block and an odd count
        "edges": torch.cat([edge_block(), torch.zeros(64 - edge_block().numel() % 64 if edge_block().numel() % 64 else 0)]).reshape(-1, 8),
        "zero-block": torch.cat([torch.zeros(64), mat(1, 64, 9, 2.0).reshape(-1) * -1.0, torch.zeros(64)]).reshape(3, 64),
        "negmax": (mat(2, 64, 10, 0.5) - 0.6),
    }
    for name, w in cases.items():
        packed, absmax, codes = nf4_quantize(w)
        deq = nf4_dequantize(packed, absmax, w.numel()).reshape(w.shape)
        if name in ("edges", "zero-block", "negmax"):
            tensors[f"nf4.{name}.w"] = w.contiguous()
        tensors[f"nf4.{name}.packed"] = packed.contiguous()
        tensors[f"nf4.{name}.absmax"] = absmax.contiguous()
        tensors[f"nf4.{name}.codes"] = codes.contiguous()
        tensors[f"nf4.{name}.dequantized"] = deq.contiguous()
    _, gabs, gcodes = nf4_quantize(golden)
    gdeq = nf4_dequantize(nf4_quantize(golden)[0], gabs, 64)
    notes["nf4_golden"] = {
        "absmax": float(gabs[0]),
        "first_codes": gcodes[:16].tolist(),
        "max_abs_error": float((gdeq - golden.reshape(-1)).abs().max()),
    }
    # blocksize 128 too (bitsandbytes accepts 32..4096)
    packed, absmax, codes = nf4_quantize(cases["spec"], blocksize=128)
    tensors["nf4.spec-b128.packed"] = packed
    tensors["nf4.spec-b128.absmax"] = absmax
    tensors["nf4.spec-b128.dequantized"] = nf4_dequantize(packed, absmax, cases["spec"].numel(), 128).reshape(64, 128)

    # --- int8 (bitsandbytes vectorwise) ----------------------------------------------------------------
    int8_cases = {
        "spec": gmat(64, 128, 71, 0.02),  # regenerated in the tests
        "halves": torch.tensor([[127.0, 2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -126.5], [-4.0, 1.0, 0.5, 1.5, 2.0, 0.0, -2.0, 3.0]]),
        "zero-row": torch.cat([torch.zeros(1, 16), mat(2, 16, 3, 1.0)]),
        "small": mat(5, 33, 12, 1e-3),
    }
    for name, w in int8_cases.items():
        for f16 in (False, True):
            q, scb = int8_quantize(w, float16_input=f16)
            tag = f"int8{'-f16' if f16 else ''}.{name}"
            if name != "spec" and not f16:
                tensors[f"{tag}.w"] = w.contiguous()
            tensors[f"{tag}.q"] = q.contiguous()
            tensors[f"{tag}.scb"] = scb.contiguous()
            tensors[f"{tag}.dequantized"] = int8_dequantize(q, scb).contiguous()

    # --- NFQuantizer (LoftQ authors), 2 / 3 / 4 bits ---------------------------------------------------
    books = {}
    for bits in (2, 3, 4):
        book = create_normal_map(bits)
        books[bits] = book
        tensors[f"nfq{bits}.book"] = book
        for name, w in {"spec": gmat(64, 128, 71, 0.02), "edges": nf_edge_block(book).reshape(-1, 16)}.items():
            # (at 3 bits the reference's pack buffer holds M*N*3/8 bytes while 8 // 3 = 2 codes go in a byte,
            # so it fails; the codes and values are well defined, and two 3-bit codes a byte is what we pack)
            packed, wmax, codes, _ = nf_quantize(w, bits)
            if name == "edges":
                tensors[f"nfq{bits}.{name}.w"] = w.contiguous()
            tensors[f"nfq{bits}.{name}.packed"] = packed.contiguous()
            tensors[f"nfq{bits}.{name}.absmax"] = wmax.contiguous()
            tensors[f"nfq{bits}.{name}.codes"] = codes.contiguous()
            tensors[f"nfq{bits}.{name}.dequantized"] = nf_dequantize(codes, wmax, bits).reshape(w.shape).contiguous()
    notes["nf4_book_minus_bnb"] = (books[4] - NF4).tolist()

    # --- loftq_init -----------------------------------------------------------------------------------
    W = gmat(64, 128, 71, 0.02)
    tall = gmat(96, 40, 72, 0.05)
    runs = {}
    for tag, w, bits, r in [
        ("b4r8", W, 4, 8),
        ("b2r8", W, 2, 8),
        ("b3r8", W, 3, 8),
        ("b8r8", W, 8, 8),
        ("b4r4", W, 4, 4),
        ("b4r16", W, 4, 16),
        ("tall-b2r4", tall, 2, 4),
        ("lap-b2r8", lapmat(64, 128, 73, 0.02), 2, 8),
        ("lap-b4r8", lapmat(64, 128, 73, 0.02), 4, 8),
    ]:
        errors = []
        q5, a5, b5 = loftq_init(w, bits, r, num_iter=5, errors=errors)
        q1, a1, b1 = loftq_init(w, bits, r, num_iter=1)
        no_lora = float(torch.linalg.norm(w - fake_quant(w, bits)) / torch.linalg.norm(w))
        runs[tag] = {"bits": bits, "rank": r, "shape": list(w.shape), "no_lora": no_lora, "errors": errors}
        # W is regenerated by the LCG in the tests; Q after one iteration is the quantizer's own output
        if tag in ("b4r8", "b2r8", "b8r8", "tall-b2r4"):
            tensors[f"loftq.{tag}.t1.ba"] = (b1 @ a1).contiguous()
        if tag == "b4r8":
            tensors[f"loftq.{tag}.t1.a"] = a1.contiguous()
            tensors[f"loftq.{tag}.t1.b"] = b1.contiguous()
            tensors[f"loftq.{tag}.t5.q"] = q5.contiguous()
            tensors[f"loftq.{tag}.t5.ba"] = (b5 @ a5).contiguous()
    notes["loftq"] = runs

    # --- PEFT's get_peft_model(init_lora_weights="loftq") with the spelled-out loftq_init ---------------
    import peft.tuners.lora.layer as lora_layer
    from peft import LoftQConfig, LoraConfig, get_peft_model

    lora_layer.loftq_init = loftq_init  # what LoraLayer.loftq_init calls (bitsandbytes is not installed)
    torch.manual_seed(0)
    net = LoftqNet()
    base = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(base, os.path.join(OUT, "net-base.safetensors"))
    x = mat(5, 16, 80, 1.0)
    peft_cases = {}
    for tag, bits, iters, r, alpha in [("net-b4", 4, 2, 4, 4), ("net-b2", 2, 3, 4, 8), ("net-b8", 8, 1, 2, 2)]:
        model = LoftqNet()
        model.load_state_dict(base)
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=["up", "down"],
            init_lora_weights="loftq",
            loftq_config=LoftQConfig(loftq_bits=bits, loftq_iter=iters),
        )
        pm = get_peft_model(model, config)
        pm.eval()
        out = {}
        for n, p in pm.named_parameters():
            out[n] = p.detach().clone().contiguous()
        with torch.no_grad():
            out["output"] = pm(x).contiguous()
        out["x"] = x.contiguous()
        save_file(out, os.path.join(OUT, f"{tag}.safetensors"))
        peft_cases[tag] = {"bits": bits, "iter": iters, "r": r, "alpha": alpha, "keys": sorted(out)}
    notes["peft"] = peft_cases

    # the big matrices' codes are in their packed bytes and their values follow from codes and scales: one
    # dequantized copy (NF4's) is kept, to check the products themselves
    lean = {
        k: v
        for k, v in tensors.items()
        if not (".spec" in k and (k.endswith(".codes") or k.endswith(".dequantized")) and k != "nf4.spec.dequantized")
    }
    save_file({k: v.clone().contiguous() for k, v in lean.items()}, os.path.join(OUT, "quantizers.safetensors"))
    with open(os.path.join(OUT, "loftq-notes.json"), "w") as f:
        json.dump(notes, f, indent=1)
        f.write("\n")
    print(json.dumps({k: notes[k] for k in ("nf4_golden", "nf4_tree_vs_fp32_midpoints", "nf4_book_minus_bnb")}, indent=1))
    for tag, run in runs.items():
        print(tag, "no-LoRA %.6f" % run["no_lora"], " ".join("%.6f" % e for e in run["errors"]))


if __name__ == "__main__":
    main()
