"""PEFT 0.21 LoRA-GA on a tiny transformers LlamaForCausalLM with fixed batches, for
examples/loraga-init/src/parity.test.ts: the model (config.json, model.safetensors), the batches, the
mean gradients preprocess_loraga attaches to every projection, and for the four direction / scale
pairs of the issue what does not depend on torch.svd_lowrank's random sketch (per target: the singular
values of s*B*A, ||W_new - W0||_F, ||A||_F, ||B||_F), the base logits, how far PEFT's output at init is
from them, and the spread of weight_svd's sigma1(W) estimate over torch's sketches. Writes examples/loraga-init/__fixtures__/tiny-llama/."""
import json
import os
import shutil

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraGAConfig, preprocess_loraga
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "examples", "loraga-init", "__fixtures__", "tiny-llama")
shutil.rmtree(OUT, ignore_errors=True)
os.makedirs(OUT)

R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAIRS = [("ArB2r", "stable"), ("ArBr", "weight_svd"), ("A2rBr", "gd_scale"), ("ArB2r", "unit")]

cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
torch.manual_seed(1600)
LlamaForCausalLM(cfg).save_pretrained(OUT)
for f in os.listdir(OUT):
    if f not in ("config.json", "model.safetensors"):
        os.remove(os.path.join(OUT, f))
g = torch.Generator().manual_seed(1601)
batches = [torch.randint(3, 96, (2, 12), generator=g) for _ in range(4)]
x = torch.randint(3, 96, (2, 12), generator=g)
expected = {"x": x.to(torch.int32), **{f"batch.{i}": b.to(torch.int32) for i, b in enumerate(batches)}}


def fresh():
    m = LlamaForCausalLM.from_pretrained(OUT, dtype=torch.float32)
    return m


with torch.no_grad():
    expected["base_logits"] = fresh().eval()(input_ids=x).logits
w0 = {n: p.detach().clone() for n, p in fresh().named_parameters()}
notes = {"pairs": [], "max_abs_peft_init_minus_base": {}}
for d, s in PAIRS:
    model = fresh()
    lcfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights="lora_ga",
                      lora_ga_config=LoraGAConfig(direction=d, scale=s))

    def train_step():
        for b in batches:
            model(input_ids=b, labels=b).loss.backward()

    preprocess_loraga(model, lcfg, train_step)
    for name, module in model.named_modules():
        if hasattr(module, "_peft_loraga_grad"):
            grad = module._peft_loraga_grad.clone()
            if f"grad.{name}" in expected:
                assert torch.equal(grad, expected[f"grad.{name}"]), name
            expected[f"grad.{name}"] = grad
    torch.manual_seed(1602)
    pm = get_peft_model(model, lcfg).eval()
    key = f"{d}.{s}"
    for name, layer in pm.base_model.model.named_modules():
        if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
            continue
        A = layer.lora_A["default"].weight.detach().double()
        B = layer.lora_B["default"].weight.detach().double()
        sc = layer.scaling["default"]
        w_new = layer.base_layer.weight.detach().double()
        base = w0[f"{name}.weight"].double()
        expected[f"{key}.{name}.sv"] = torch.linalg.svdvals(sc * B @ A)[:R].float()
        expected[f"{key}.{name}.norms"] = torch.tensor([torch.linalg.norm(w_new - base), torch.linalg.norm(A), torch.linalg.norm(B)]).float()
        assert (w_new + sc * B @ A - base).abs().max() < 1e-5
    with torch.no_grad():
        out = pm(input_ids=x).logits
    notes["pairs"].append(key)
    notes["max_abs_peft_init_minus_base"][key] = float((out - expected["base_logits"]).abs().max())
    print(key, notes["max_abs_peft_init_minus_base"][key])

# weight_svd scales B by sigma1(W) as svd_lowrank(W, q=r, niter=4) estimates it: on these random weights (a flat
# spectrum) that estimate varies by several percent with the sketch, so the test brackets ours by the exact
# sigma1 and the smallest of 200 torch draws of the same estimator
for name, module in fresh().named_modules():
    if name.split(".")[-1] in TARGETS:
        W = module.weight.detach().float()
        draws = []
        for seed in range(200):
            torch.manual_seed(seed)
            draws.append(torch.svd_lowrank(W, q=R, niter=4)[1][0].item())
        exact = torch.linalg.svdvals(W.double())[0].item()
        expected[f"sigma1.{name}"] = torch.tensor([exact, min(draws), max(draws)]).float()
save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
notes.update({"r": R, "lora_alpha": ALPHA, "targets": TARGETS, "torch": torch.__version__,
              "peft": __import__("peft").__version__, "transformers": __import__("transformers").__version__})
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(notes, f, indent=2)
print("wrote", sorted(os.listdir(OUT)), sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)), "bytes")
