"""Merging adapters that carry whole base tensors (modules_to_save copies, biases trained with
bias='all' / 'lora_only', lora_bias on top) as PEFT 0.21's merge_and_unload leaves them: the merged
model's every tensor, for `mergeAdapterWeights` and `lora merge` to equal.
Writes packages/core/__fixtures__/merge-replaced-*/ and merge-replaced-expected.safetensors."""
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from oracle_common import CORE_FIXTURES as OUT, save_adapter  # noqa: E402
from peft_fixtures_net import Net  # noqa: E402

base_sd = load_file(os.path.join(OUT, "base.safetensors"))
cases = {
    "mts": LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["head"], init_lora_weights=False),
    "bias-all": LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "mlp"], bias="all", init_lora_weights=False),
    "bias-lora-only": LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "mlp"], bias="lora_only", lora_bias=True, init_lora_weights=False
    ),
}
expected = {}
for i, (name, config) in enumerate(cases.items()):
    m = Net()
    m.load_state_dict(base_sd)
    torch.manual_seed(80 + i)
    pm = get_peft_model(m, config).eval()
    with torch.no_grad():
        # "trained": every trainable tensor moved off its initial value
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    save_adapter(pm, os.path.join(OUT, f"merge-replaced-{name}"))
    with torch.no_grad():
        merged = pm.merge_and_unload()
        for k, v in merged.state_dict().items():
            expected[f"{name}.{k}"] = v.detach().clone().contiguous()
save_file(expected, os.path.join(OUT, "merge-replaced-expected.safetensors"))
print("merge-replaced fixtures written:", ", ".join(cases))
