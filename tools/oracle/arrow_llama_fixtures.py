"""PEFT 0.21 fixtures for examples/arrow-library: Arrow routing on a tiny transformers Llama.

A random tiny Llama (transformers' init, seed 180; the 300-token BPE tokenizer of packages/models'
fixtures), five task experts and two general adapters saved by PEFT (r=4 on all seven projections,
factors set from seeded normals, four with a dominant direction, different lora_alpha, one with
rsLoRA). For top-2, top-3 at temperature 0.5, and top-2 with GenKnowSub over the two general adapters
(create_arrow_model, rng_seed 42): the logits on fixed ids, and PEFT's greedy generation of 8 tokens
after a prompt (routed token by token with the KV cache), which `lora arrow` must reproduce.

Writes examples/arrow-library/__fixtures__/: tiny-llama/, task-0..4/, general-0..1/, expected.safetensors,
expected.json."""
import json
import os
import shutil
import sys

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import ArrowConfig, create_arrow_model
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import save_adapter  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.environ.get("ORACLE_OUT") or os.path.join(ROOT, "examples", "arrow-library", "__fixtures__")
TOKENIZER = os.path.join(ROOT, "packages", "models", "__fixtures__", "tokenizer")
BASE = os.path.join(OUT, "tiny-llama")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "the quick brown fox"

torch.manual_seed(180)
config = LlamaConfig(
    vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)  # fmt: skip
shutil.rmtree(BASE, ignore_errors=True)
LlamaForCausalLM(config).save_pretrained(BASE)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(TOKENIZER, f), os.path.join(BASE, f))
for f in os.listdir(BASE):
    if f not in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        os.remove(os.path.join(BASE, f))


def fresh():
    model = LlamaForCausalLM.from_pretrained(BASE).eval()
    # a path relative to the fixtures, not this machine's, goes into adapter_config.json
    model.name_or_path = "../tiny-llama"
    return model


def make_adapter(name, seed, alpha, structured=True, scale=0.15, **kw):
    pm = get_peft_model(fresh(), LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in pm.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) * scale)
                b.copy_(torch.randn(b.shape, generator=g) * scale)
                if structured:
                    a[0] *= 4
                    b[:, 0] *= 4
    save_adapter(pm, os.path.join(OUT, name))
    return os.path.join(OUT, name)


tasks = [
    make_adapter("task-0", 1, 8),
    make_adapter("task-1", 2, 16),
    make_adapter("task-2", 3, 8),
    make_adapter("task-3", 4, 4, structured=False),
    make_adapter("task-4", 5, 12, use_rslora=True),
]
general = [make_adapter("general-0", 11, 8, structured=False, scale=0.05), make_adapter("general-1", 12, 8, structured=False, scale=0.05)]

g = torch.Generator().manual_seed(181)
ids = torch.randint(3, 300, (2, 6), generator=g)
prompt_ids = Tokenizer.from_file(os.path.join(BASE, "tokenizer.json")).encode(PROMPT).ids
expected = {"ids": ids.to(torch.int32)}
record = {"prompt": PROMPT, "prompt_ids": prompt_ids, "generated": {}}
with torch.no_grad():
    expected["base.logits"] = fresh()(ids).logits

CASES = {
    "top2": (ArrowConfig(top_k=2, rng_seed=42), None),
    "top3-t05": (ArrowConfig(top_k=3, router_temperature=0.5, rng_seed=42), None),
    "gks": (ArrowConfig(top_k=2, use_gks=True, rng_seed=42), general),
}
for key, (cfg, gen) in CASES.items():
    model = create_arrow_model(fresh(), tasks, cfg, general_adapter_paths=gen).eval()
    with torch.no_grad():
        logits = model(ids).logits
        assert torch.equal(logits, model(ids).logits)
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected[f"{key}.logits"] = logits
    record["generated"][key] = out[0].tolist()
    print(key, "max|logits - base|", (logits - expected["base.logits"]).abs().max().item(), "generated", out[0].tolist()[len(prompt_ids):])

save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
