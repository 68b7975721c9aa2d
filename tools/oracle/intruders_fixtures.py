"""Fixtures of @lora/intruders: PEFT 0.21's reduce_intruder_dimension on small models, for several settings.

Writes packages/intruders/__fixtures__/:
  <net>/base.safetensors          the base model's weights (PyTorch names)
  <net>/adapter/                  the trained-like adapter, saved by PEFT (adapter_config.json, adapter_model.safetensors)
  <net>/<setting>.safetensors     per LoRA layer, as PEFT assigned them: <path>.B_new, <path>.A_new (the new
                                  lora_B / lora_A or lora_embedding_B / lora_embedding_A, which for an Embedding and a
                                  Conv1D are PEFT's transposed factors), <path>.cos (PEFT's cos_sim of the layer, from
                                  its own two SVDs), and the reduced model's output on `input` where it has one
  <net>/record.json               per setting: the options, PEFT's log lines, the intruder count per layer, the scaling
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.intruders import reduce_intruder_dimension
from peft.tuners.lora.layer import LoraLayer
from safetensors.torch import save_file

from intruders_net import IntruderGpt, IntruderNet
from oracle_common import save_adapter

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "intruders", "__fixtures__")

SETTINGS = {
    "default": {},
    "k4-eps0.9-lambda0.5": {"top_k": 4, "threshold_epsilon": 0.9, "mitigation_lambda": 0.5},
    "all-lambda0": {"threshold_epsilon": 999.0, "mitigation_lambda": 0.0},
}


def separated(m, n, seed):
    """An m×n matrix with singular values 2·0.96^j (distinct: W's singular vectors, which the cosines compare with, are
    then well defined) and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=g))
    s = 2 * 0.96 ** torch.arange(min(m, n), dtype=torch.float32)
    return (u * s) @ v.T


def build(name):
    torch.manual_seed(18)
    if name == "net":
        model = IntruderNet()
        with torch.no_grad():
            model.big.weight.copy_(separated(112, 128, 5))
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["embed", "q_proj", "up_proj", "down_proj", "big"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={"up_proj": 16},
            init_lora_weights=False,
        )
        # how strong each layer's update is: some layers get intruders, some none
        scales = {"embed": 0.6, "q_proj": 0.5, "up_proj": 0.25, "down_proj": 0.02, "big": 0.35}
        example = {"input": torch.tensor([[1, 5, 7, 29, 0, 13]])}
    else:
        model = IntruderGpt()
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_fc", "c_proj", "c_sq"], fan_in_fan_out=True, init_lora_weights=False)
        scales = {"c_fc": 0.5, "c_proj": 0.4, "c_sq": 0.5}
        example = {"input": torch.randn(3, 24, generator=torch.Generator().manual_seed(3))}
    base = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if "lora_" in pname:
                layer = next(k for k in scales if f".{k}." in pname)
                p.copy_(torch.randn(p.shape, generator=g) * scales[layer])
    return peft_model, base, example


def lora_layers(peft_model):
    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


def cosines(layer, adapter):
    """PEFT's cos_sim for one layer, with PEFT's own two SVDs (the lines of reduce_intruder_dimension)."""
    w = layer.get_base_layer().weight.data
    merged = w + layer.get_delta_weight(adapter)
    u_base = torch.linalg.svd(w, full_matrices=False)[0]
    u_merged = torch.linalg.svd(merged, full_matrices=False)[0]
    return (u_merged.T @ u_base).abs().max(dim=1).values


def main():
    for net in ["net", "gpt"]:
        directory = os.path.join(OUT, net)
        os.makedirs(directory, exist_ok=True)
        peft_model, base, example = build(net)
        save_file(base, os.path.join(directory, "base.safetensors"))
        save_adapter(peft_model, os.path.join(directory, "adapter"))
        record = {}
        for setting, kwargs in SETTINGS.items():
            peft_model, _, example = build(net)
            peft_model.eval()
            before = {n: cosines(m, "default") for n, m in lora_layers(peft_model)}
            lines = []
            reduce_intruder_dimension(peft_model, logging_sink=lines.append, **kwargs)
            tensors = {}
            counts = {}
            scalings = {}
            for n, m in lora_layers(peft_model):
                path = n.removeprefix("base_model.model.")
                emb = "intruder_reduced" not in m.lora_B
                b_new = (m.lora_embedding_B if emb else {k: v.weight for k, v in m.lora_B.items()})["intruder_reduced"]
                a_new = (m.lora_embedding_A if emb else {k: v.weight for k, v in m.lora_A.items()})["intruder_reduced"]
                tensors[f"{path}.B_new"] = b_new.detach().clone().contiguous()
                tensors[f"{path}.A_new"] = a_new.detach().clone().contiguous()
                tensors[f"{path}.cos"] = before[n].contiguous()
                scalings[path] = m.scaling["default"]
                line = next(x for x in lines if x.startswith(n + ":"))
                counts[path] = 0 if line.endswith("No intruders") else int(line.rsplit(" ", 1)[1])
            try:
                with torch.no_grad():
                    tensors["output"] = peft_model(example["input"]).contiguous()
                forward = "ok"
            except (RuntimeError, IndexError) as e:
                forward = f"{type(e).__name__}: {e}"
            tensors["input"] = example["input"].contiguous()
            save_file(tensors, os.path.join(directory, f"{setting}.safetensors"))
            record[setting] = {
                "options": kwargs,
                "lines": lines,
                "intruders": counts,
                "scaling": scalings,
                "forward": forward,
                "active_adapters": list(peft_model.active_adapters),
            }
        with open(os.path.join(directory, "record.json"), "w") as f:
            json.dump(record, f, indent=1)
        print(net, json.dumps({s: r["intruders"] for s, r in record.items()}), {s: r["forward"][:60] for s, r in record.items()})


if __name__ == "__main__":
    main()
