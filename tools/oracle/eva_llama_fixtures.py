"""PEFT 0.21 EVA on a tiny transformers LlamaForCausalLM with fixed batches, for examples/eva-init:
the checkpoint (config.json, model.safetensors), the batches, and per case (rho 1 and 2, whitening, a
label-masked case) the EVA state dict, the adapter's rank/alpha patterns and target modules after
initialize_lora_eva_weights, PEFT's saved adapter, and each hook layer's number of incremental-PCA updates.
Writes examples/eva-init/fixtures/ (python tools/oracle/eva_llama_fixtures.py)."""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import peft  # noqa: E402
from peft import EvaConfig, LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights  # noqa: E402

from eva_counting import count_pca_updates  # noqa: E402
from oracle_common import save_adapter  # noqa: E402

ROOT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eva-init", "fixtures")
os.makedirs(ROOT, exist_ok=True)

updates = count_pca_updates("base_model.model.")  # batches each hook layer's incremental PCA used

cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
torch.manual_seed(11)
base = LlamaForCausalLM(cfg).eval()
ckpt = os.path.join(ROOT, "tiny-llama")
shutil.rmtree(ckpt, ignore_errors=True)
base.save_pretrained(ckpt)
base_sd = {k: v.clone() for k, v in base.state_dict().items()}

g = torch.Generator().manual_seed(2)
batches, labelled = [], []
for b in range(5):
    ids = torch.randint(3, 96, (3, 16), generator=g)
    mask = torch.ones(3, 16, dtype=torch.long)
    for row in range(3):
        n = int(torch.randint(9, 17, (1,), generator=g))
        mask[row, n:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt whose tokens are not trained on
    labels[mask == 0] = -100
    batches.append({"input_ids": ids, "attention_mask": mask})
    labelled.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
save_file({f"{k}.{i}": v.to(torch.int32).contiguous() for i, b in enumerate(labelled) for k, v in b.items()}, os.path.join(ROOT, "batches.safetensors"))

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
cases = {
    "rho2": (dict(rho=2.0), batches),
    "rho1": (dict(rho=1.0), batches),
    "whiten": (dict(rho=2.0, whiten=True), batches),
    "labels": (dict(rho=2.0), labelled),
}


def fresh():
    m = LlamaForCausalLM(cfg)
    m.load_state_dict(base_sd)
    return m.eval()


for name, (eva_kw, data) in cases.items():
    out = os.path.join(ROOT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=ALL, init_lora_weights="eva", eva_config=EvaConfig(**eva_kw))
    torch.manual_seed(0)
    pm = get_peft_model(fresh(), config)
    updates.clear()
    sd = get_eva_state_dict(pm, data, show_progress_bar=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "eva_state_dict.safetensors"))
    shapes = {k: list(v.shape) for k, v in sd.items()}
    initialize_lora_eva_weights(pm, eva_state_dict={k: v.clone() for k, v in sd.items()})
    c = pm.peft_config["default"]
    save_adapter(pm, os.path.join(out, "adapter"))
    result = {
        "eva": eva_kw,
        "labels": data is labelled,
        "keys": list(sd),
        "shapes": shapes,
        "rank_pattern": c.rank_pattern,
        "alpha_pattern": c.alpha_pattern,
        "target_modules": sorted(c.target_modules),
        "updates": dict(updates),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print(name, {k.replace("base_model.model.model.layers.", ""): v[0] for k, v in shapes.items()}, "updates", sorted(set(updates.values())))
with open(os.path.join(ROOT, "versions.json"), "w") as f:
    json.dump({"peft": peft.__version__, "torch": torch.__version__}, f)
