"""Gradients of the tiny Llama checkpoints' loss (train mode, transformers' eager attention), for
@lora/models' backward-pass parity tests: reads packages/models/__fixtures__/<case>/ (made by
llama_fixtures.py) and writes <case>/grads.safetensors, the loss's gradient for every parameter by
its state-dict name, on the inputs, padding mask and labels of that case's expected.safetensors."""
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "models", "__fixtures__")
SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "packages", "models", "__fixtures__")
for name in ["llama-gqa", "llama-mha-tied"]:
    model = AutoModelForCausalLM.from_pretrained(os.path.join(SOURCE, name), attn_implementation="eager", dtype=torch.float32)
    model.train()  # the configs have no dropout: train mode changes nothing but the mode
    inputs = load_file(os.path.join(SOURCE, name, "expected.safetensors"))
    out = model(input_ids=inputs["input_ids"].long(), attention_mask=inputs["attention_mask"].long(), labels=inputs["labels"].long())
    out.loss.backward()
    grads = {n: p.grad.detach().numpy().astype(np.float32) for n, p in model.named_parameters() if p.grad is not None}
    grads["loss"] = out.loss.detach().reshape(1).numpy().astype(np.float32)
    os.makedirs(os.path.join(ROOT, name), exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in grads.items()}, os.path.join(ROOT, name, "grads.safetensors"))
    print(name, len(grads) - 1, "gradients, loss", out.loss.item())
