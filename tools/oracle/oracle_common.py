"""What the PEFT fixture scripts share: where fixtures go, and saving an adapter without its model card."""
import os
import shutil

import torch

CORE_FIXTURES = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")


def save_adapter(model, directory, **kwargs):
    """save_pretrained into a clean directory, without the model cards (README.md) PEFT writes."""
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, **kwargs)
    for root, _, files in os.walk(directory):
        for f in files:
            if f.endswith(".md"):
                os.remove(os.path.join(root, f))


def seeded_lora_init(model_cls, state_dict, seed, config):
    """The LoRA weights get_peft_model draws for `config` on a fresh `model_cls` holding `state_dict`,
    after torch.manual_seed(seed), by parameter name: what tests compare their own seeded init with."""
    from peft import get_peft_model

    model = model_cls()
    model.load_state_dict(state_dict)
    torch.manual_seed(seed)
    pm = get_peft_model(model, config)
    return {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" in n}
