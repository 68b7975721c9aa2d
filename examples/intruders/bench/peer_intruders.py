"""The PEFT side of the intruders benchmark (examples/intruders/bench/intruders-bench.js runs ours on the same files).

Builds the base and a LoRA adapter (r 16, alpha 32, on all seven linear targets of a Llama, lora_B drawn
from N(0, B_STD²) so that ΔW ≠ 0 and W + ΔW has intruders), saves both in Hugging Face / PEFT layout
under --dir, then times PEFT 0.21's reduce_intruder_dimension (default settings) --runs times on
--device and saves what the first run made (the new factors and PEFT's per-layer intruder counts) for
our side to be compared with.

  --model 123m       the 123M Llama of the GPU benches (hidden 1024, intermediate 2816, 16 / 4 heads,
                     vocab 32000, tied), --layers decoder layers (default 8), random init (seed 0)
  --model fortune    examples/fortune-llama/model (bf16, read as float32)

Writes --dir/base/ (123m only), --dir/adapter/, --dir/peft-reduced.safetensors, --dir/peer.json, and
prints peer.json. CUDA's solver is warmed up on a small SVD first, so its one-time start is not counted.
"""

import argparse
import json
import os
import sys
import platform
import statistics
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HERE = os.path.dirname(os.path.abspath(__file__))
FORTUNE = os.path.normpath(os.path.join(HERE, "..", "..", "fortune-llama", "model"))


def build_base(args):
    if args.model == "fortune":
        return LlamaForCausalLM.from_pretrained(FORTUNE, dtype=torch.float32), FORTUNE
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    base_dir = os.path.join(args.dir, "base")
    model.save_pretrained(base_dir, safe_serialization=True)
    return model, base_dir


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reference64(model, counts, svals, out_dir):
    """PEFT's algorithm in float64 (untimed) where all top_k directions are intruders: ref64.safetensors."""
    # untimed: the same reduction in float64 where PEFT found all top_k (10) directions intruders,
    # so the intruder set is known without W's SVD; the rank-r step from the stacked factors' QR
    ref = {}
    lam, top_k = 0.75, 10
    with torch.no_grad():
        for n, m in model.named_modules():
            if not (hasattr(m, "lora_B") and "default" in m.lora_B):
                continue
            path = n.removeprefix("base_model.model.")
            w = m.base_layer.weight.double()
            s = m.scaling["default"]
            b = m.lora_B["default"].weight.double()
            a = m.lora_A["default"].weight.double()
            u, sv, vh = torch.linalg.svd(w + s * (b @ a), full_matrices=False)
            svals[path] = sv[:12].tolist()
            if counts.get(path) != top_k:
                continue
            left = torch.cat([b, ((lam - 1) / s) * u[:, :top_k] * sv[:top_k]], dim=1)
            right = torch.cat([a, vh[:top_k]], dim=0)
            q1, r1 = torch.linalg.qr(left)
            q2, r2 = torch.linalg.qr(right.T)
            uc, sc, vch = torch.linalg.svd(r1 @ r2.T)
            r = b.shape[1]
            ba = (q1 @ uc[:, :r]) @ torch.diag(sc[:r]) @ (vch[:r] @ q2.T)
            ref[f"{path}.BA"] = ba.float().cpu().contiguous()
    save_file(ref, os.path.join(out_dir, "ref64.safetensors"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["123m", "fortune"], default="123m")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dir", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--b-std", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--reference64", action="store_true",
                   help="after the timed runs, PEFT's algorithm in float64 (W + ΔW's SVD in float64, the mitigation "
                        "from stacked factors) for every layer whose top_k directions are all intruders: ref64.safetensors")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.dir, exist_ok=True)
    base, base_dir = build_base(args)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0)
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                w = module.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=gen) * args.b_std)
    model.save_pretrained(os.path.join(args.dir, "adapter"))
    model.to(args.device).eval()
    if args.device.startswith("cuda"):
        torch.linalg.svd(torch.randn(64, 64, device=args.device), full_matrices=False)
        sync(args.device)
    times = []
    cpu = []
    counts = {}
    for run in range(args.runs):
        lines = []
        name = f"reduced_{run}"
        sync(args.device)
        t0 = time.perf_counter()
        c0 = time.process_time()
        reduce_intruder_dimension(model, new_adapter_name=name, logging_sink=lines.append)
        sync(args.device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if run == 0:
            tensors = {}
            for n, m in model.named_modules():
                if hasattr(m, "lora_B") and name in m.lora_B:
                    path = n.removeprefix("base_model.model.")
                    tensors[f"{path}.lora_A"] = m.lora_A[name].weight.detach().float().cpu().contiguous()
                    tensors[f"{path}.lora_B"] = m.lora_B[name].weight.detach().float().cpu().contiguous()
                    line = next(x for x in lines if x.startswith(n + ":"))
                    counts[path] = 0 if line.endswith("No intruders") else int(line.rsplit(" ", 1)[1])
            save_file(tensors, os.path.join(args.dir, "peft-reduced.safetensors"))
        model.set_adapter("default")
        model.delete_adapter(name)
    svals = {}
    try:
        if args.reference64:
            reference64(model, counts, svals, args.dir)
    except Exception as err:  # the timed results above still get written
        print(f"reference64 failed: {err!r}", file=sys.stderr)
    record = {
        "svals64": svals,
        "peer": f"PEFT {peft.__version__} / PyTorch {torch.__version__} / transformers {transformers.__version__}",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "layers": args.layers if args.model == "123m" else base.config.num_hidden_layers,
        "base_dir": base_dir,
        "adapter_dir": os.path.join(args.dir, "adapter"),
        "runs_s": times,
        "median_s": statistics.median(times),
        "cpu_s": cpu,
        "intruders": counts,
        "total_intruders": sum(counts.values()),
    }
    with open(os.path.join(args.dir, "peer.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
