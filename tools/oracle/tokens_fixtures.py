"""PEFT 0.21 fixtures for @lora/core's trainable tokens, save_embedding_layers and the PiSSA/OLoRA →
LoRA conversion on save. Writes packages/core/__fixtures__/ (tokens-*, peft-tokens-*, peft-embed-layers,
pissa-convert-*). The TokNet (tokens_net.py) is written again in packages/core/src/token-nets.test-util.ts."""
import json
import os
import shutil
import sys
import warnings

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT, save_adapter  # noqa: E402

os.makedirs(OUT, exist_ok=True)
from peft_fixtures_net import Net  # noqa: E402
from tokens_net import TokNet  # noqa: E402




def tok_net(tied, sd):
    m = TokNet(tied)
    m.load_state_dict(sd, strict=False)
    return m.eval()


def perturb_deltas(pm, seed):
    """Simulated training of the token rows: every delta moves away from the base rows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.5 * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- trainable tokens
torch.manual_seed(80)
untied_sd = {k: v.clone().contiguous() for k, v in TokNet(False).state_dict().items()}
torch.manual_seed(81)
tied_sd = {k: v.clone().contiguous() for k, v in TokNet(True).state_dict().items() if k != "lm_head.weight"}
save_file(untied_sd, os.path.join(OUT, "tokens-base.safetensors"))
save_file(tied_sd, os.path.join(OUT, "tokens-tied-base.safetensors"))
ids = torch.tensor([[1, 3, 0, 5, 2, 9], [4, 7, 1, 19, 6, 3], [5, 8, 2, 3, 12, 1]])
tokens = {"ids": ids.to(torch.int32), "base_out": tok_net(False, untied_sd)(ids).detach(), "tied_base_out": tok_net(True, tied_sd)(ids).detach()}

cases = {
    "tokens-list": (False, [1, 3, 5]),
    "tokens-dict": (False, {"embed_tokens": [0, 2], "lm_head": [4, 7, 9]}),
    "tokens-tied": (True, [1, 3, 5]),
    "tokens-tied-dict": (True, {"embed_tokens": [2, 4], "lm_head": [6]}),
}
for i, (name, (tied, indices)) in enumerate(cases.items()):
    torch.manual_seed(90 + i)
    pm = get_peft_model(tok_net(tied, tied_sd if tied else untied_sd), LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], trainable_token_indices=indices, init_lora_weights=False)).eval()
    perturb_deltas(pm, 100 + i)
    save_adapter(pm, os.path.join(OUT, f"peft-{name}"))
    with torch.no_grad():
        tokens[f"{name}.out"] = pm(ids)
        with pm.disable_adapter():
            tokens[f"{name}.disabled_out"] = pm(ids)
        pm.merge_adapter()
        tokens[f"{name}.merged_out"] = pm(ids)
        pm.unmerge_adapter()
        tokens[f"{name}.unmerged_out"] = pm(ids)
        merged = pm.merge_and_unload()
        tokens[f"{name}.merged.embed_tokens.weight"] = merged.embed_tokens.weight.clone()
        tokens[f"{name}.merged.lm_head.weight"] = merged.lm_head.weight.clone()

# several adapters: disjoint rows, each alone, a mixed batch, both merged; overlapping rows refuse to merge
torch.manual_seed(95)
pm = get_peft_model(tok_net(False, untied_sd), LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], trainable_token_indices=[1, 3], init_lora_weights=False))
torch.manual_seed(96)
pm.add_adapter("other", LoraConfig(r=2, lora_alpha=2, target_modules=["lin"], trainable_token_indices=[5, 8], init_lora_weights=False))
perturb_deltas(pm, 110)
pm.eval()
save_adapter(pm, os.path.join(OUT, "peft-tokens-multi"))
multi_notes = {}
with torch.no_grad():
    tokens["multi.default.out"] = pm(ids)
    pm.set_adapter("other")
    tokens["multi.other.out"] = pm(ids)
    tokens["multi.mixed_out"] = pm(ids, adapter_names=["default", "other", "__base__"])
    pm.base_model.merge_adapter(["default", "other"])
    emb = pm.base_model.model.embed_tokens.token_adapter.base_layer.weight
    tokens["multi.merged_both.embed_tokens.weight"] = emb.clone()
    pm.base_model.unmerge_adapter()
    tokens["multi.unmerged.embed_tokens.weight"] = emb.clone()
    pm.add_adapter("overlap", LoraConfig(r=2, target_modules=["lin"], trainable_token_indices=[3, 4]))
    try:
        pm.base_model.merge_adapter(["default", "overlap"])
    except ValueError as e:
        multi_notes["overlap_error"] = str(e)
save_file({k: v.contiguous() for k, v in tokens.items()}, os.path.join(OUT, "tokens-expected.safetensors"), metadata={"peft": peft.__version__})

# what PEFT trains, and the wrapping errors
notes = {"multi": multi_notes}
pm = get_peft_model(tok_net(True, tied_sd), LoraConfig(r=2, target_modules=["lin"], trainable_token_indices=[1, 3, 5]))
notes["tied_trainable"] = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
for label, kwargs in {
    "lora_and_tokens": dict(target_modules=["embed_tokens", "lin"], trainable_token_indices=[1]),
    "modules_to_save_and_tokens": dict(target_modules=["lin"], modules_to_save=["embed_tokens"], trainable_token_indices={"embed_tokens": [1]}),
    "not_found": dict(target_modules=["lin"], trainable_token_indices={"wte": [1]}),
    "ensure_tying_mismatch": dict(target_modules=["lin"], trainable_token_indices={"embed_tokens": [1], "lm_head": [2]}, ensure_weight_tying=True),
}.items():
    try:
        get_peft_model(tok_net(True, tied_sd), LoraConfig(r=2, **kwargs))
        notes[label] = None
    except (ValueError, TypeError) as e:
        notes[label] = f"{type(e).__name__}: {e}"

# save_embedding_layers: the keys PEFT writes for each rule ('auto' and True)
embedding_keys = {}
for label, (tied, kwargs, save) in {
    "untargeted_true": (False, dict(target_modules=["lin"]), True),
    "untargeted_auto": (False, dict(target_modules=["lin"]), "auto"),
    "embed_targeted_auto": (False, dict(target_modules=["embed_tokens", "lin"]), "auto"),
    "embed_targeted_false": (False, dict(target_modules=["embed_tokens", "lin"]), False),
    "lm_head_targeted_auto": (False, dict(target_modules=["lm_head", "lin"]), "auto"),
    "regex_targeted_auto": (False, dict(target_modules=r".*(embed_tokens|lin)"), "auto"),
    "all_linear_auto": (False, dict(target_modules="all-linear"), "auto"),
    "tokens_auto": (False, dict(target_modules=["lin"], trainable_token_indices=[1, 3]), "auto"),
    "tokens_true": (False, dict(target_modules=["lin"], trainable_token_indices=[1, 3]), True),
    "tokens_embed_targeted_auto": (False, dict(target_modules=["lm_head", "lin"], trainable_token_indices=[1, 3]), "auto"),
    "tied_true": (True, dict(target_modules=["lin"]), True),
    "tied_tokens_true": (True, dict(target_modules=["lin"], trainable_token_indices=[1, 3]), True),
}.items():
    pm = get_peft_model(tok_net(tied, tied_sd if tied else untied_sd), LoraConfig(r=2, **kwargs))
    d = os.path.join("/tmp", "lora-tokens-keys")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter(pm, d, save_embedding_layers=save)
    relevant = [str(w.message) for w in caught if "save_embedding_layers" in str(w.message) or "embedding layer" in str(w.message)]
    embedding_keys[label] = {
        "tied": tied,
        "config": kwargs,
        "save_embedding_layers": save,
        "keys": {k: list(v.shape) for k, v in sorted(load_file(os.path.join(d, "adapter_model.safetensors")).items())},
        "warnings": relevant,
    }
notes["embedding_keys"] = embedding_keys

# a file with a changed embedding saved under PEFT's name, loaded by PEFT onto the unchanged base
torch.manual_seed(97)
pm = get_peft_model(tok_net(False, untied_sd), LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "lin"], init_lora_weights=False))
with torch.no_grad():
    pm.base_model.model.embed_tokens.base_layer.weight.add_(0.1 * torch.randn(20, 8, generator=torch.Generator().manual_seed(98)))
save_adapter(pm, os.path.join(OUT, "peft-embed-layers"))
loaded = PeftModel.from_pretrained(tok_net(False, untied_sd), os.path.join(OUT, "peft-embed-layers")).eval()
embed_layers = {"out": loaded(ids).detach()}
save_file({k: v.contiguous() for k, v in embed_layers.items()}, os.path.join(OUT, "tokens-embed-layers-expected.safetensors"))
with open(os.path.join(OUT, "tokens-notes.json"), "w") as f:
    json.dump(notes, f, indent=1)
print("trainable-token and save_embedding_layers fixtures written with peft", peft.__version__)

# ---------------------------------------------------------------- PiSSA / OLoRA → LoRA on save
base_sd = load_file(os.path.join(OUT, "base.safetensors"))
x = load_file(os.path.join(OUT, "expected.safetensors"))["x"]
convert = {"x": x}
convert_cases = {
    "pissa": dict(r=3, lora_alpha=6, target_modules=["q_proj", "mlp"], rank_pattern={"mlp": 2}, alpha_pattern={"q_proj": 5}, init_lora_weights="pissa"),
    "olora": dict(r=3, lora_alpha=6, target_modules=["q_proj", "mlp"], rank_pattern={"mlp": 2}, alpha_pattern={"q_proj": 5}, init_lora_weights="olora"),
    "rslora": dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["v_proj"], init_lora_weights="pissa"),
}
for label, kwargs in convert_cases.items():
    root = os.path.join(OUT, f"pissa-convert-{label}")
    shutil.rmtree(root, ignore_errors=True)
    m = Net()
    m.load_state_dict(base_sd)
    pm = get_peft_model(m, LoraConfig(**kwargs)).eval()
    save_adapter(pm, os.path.join(root, "initial"))
    # simulated training: each factor scaled elementwise by a fixed tensor. Flipping the sign of a singular
    # vector flips the same rows of A and columns of B before and after, so the products B·A (and the
    # converted adapter's B'·A') do not depend on the SVD's or QR's sign choices.
    g = torch.Generator().manual_seed(120)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                factor = 1 + 0.3 * torch.randn(p.shape, generator=g)
                convert[f"{label}.factor.{n}"] = factor
                p.mul_(factor)
        convert[f"{label}.trained_out"] = pm(x)
    save_adapter(pm, os.path.join(root, "trained"))
    save_adapter(pm, os.path.join(root, "converted"), path_initial_model_for_weight_conversion=os.path.join(root, "initial"))
    fresh = Net()
    fresh.load_state_dict(base_sd)
    loaded = PeftModel.from_pretrained(fresh.eval(), os.path.join(root, "converted")).eval()
    with torch.no_grad():
        convert[f"{label}.converted_out"] = loaded(x)
notes_convert = {}
try:
    m = Net()
    pm = get_peft_model(m, LoraConfig(r=2, use_rslora=True, target_modules=["q_proj"], rank_pattern={"q_proj": 4}, init_lora_weights="pissa"))
    pm.save_pretrained("/tmp/lora-rslora-init")
    pm.save_pretrained("/tmp/lora-rslora-conv", path_initial_model_for_weight_conversion="/tmp/lora-rslora-init")
except ValueError as e:
    notes_convert = {"rslora_pattern_error": str(e)}
with open(os.path.join(OUT, "pissa-convert-notes.json"), "w") as f:
    json.dump(notes_convert, f, indent=1)
save_file({k: v.contiguous() for k, v in convert.items()}, os.path.join(OUT, "pissa-convert-expected.safetensors"), metadata={"peft": peft.__version__})
print("pissa/olora conversion fixtures written")
