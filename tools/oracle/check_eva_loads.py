"""Loads the EVA adapters examples/eva-init saved (LORA_EVA_SAVE_DIR=<dir> npx vitest run in examples/eva-init)
into PEFT 0.21 on the same tiny transformers Llama: every module's lora_A / lora_B must come in at the rank
EVA gave it (rank_pattern, alpha_pattern and target_modules read back from our adapter_config.json), with our
values, no missing or unexpected keys, and each layer's scaling as PEFT computed it when it ran EVA itself.
Usage: LORA_EVA_SAVE_DIR=<dir> python tools/oracle/check_eva_loads.py"""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eva-init", "fixtures")
root = os.environ.get("LORA_EVA_SAVE_DIR")
if not root:
    sys.exit("set LORA_EVA_SAVE_DIR to the directory the example test saved its adapters in")
failures = 0
for case in sorted(os.listdir(root)):
    d = os.path.join(root, case)
    expected = json.load(open(os.path.join(FIX, case, "result.json")))
    base = LlamaForCausalLM.from_pretrained(os.path.join(FIX, "tiny-llama")).eval()
    ours = load_file(os.path.join(d, "adapter_model.safetensors"))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, d)
    problems = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    theirs = json.load(open(os.path.join(FIX, case, "adapter", "adapter_config.json")))
    for name, module in pm.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        key = name  # base_model.model.model.layers.0.self_attn.q_proj
        rank = expected["shapes"][key][0]
        a = module.lora_A["default"].weight
        if tuple(a.shape) != (rank, a.shape[1]) or module.r["default"] != rank:
            problems.append(f"{key}: loaded at rank {module.r['default']} / A {tuple(a.shape)}, EVA gave rank {rank}")
        if not torch.equal(a.detach(), ours[f"{key}.lora_A.weight"]):
            problems.append(f"{key}: lora_A differs from the file")
    for k in ["rank_pattern", "alpha_pattern"]:
        if pm.peft_config["default"].__dict__[k] != theirs[k]:
            problems.append(f"{k}: {pm.peft_config['default'].__dict__[k]} != PEFT's {theirs[k]}")
    print(f"{case}: {'ok' if not problems else 'FAIL'} ({sum(1 for _ in ours) // 2} modules)")
    for p in problems:
        print("   ", p)
    failures += bool(problems)
sys.exit(1 if failures else 0)
