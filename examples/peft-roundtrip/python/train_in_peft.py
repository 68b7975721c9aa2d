"""PEFT -> @lora: trains each case of roundtrip.json with PEFT 0.21 on fortune-llama (seeded, CPU,
float32), saves the adapter with save_pretrained and the probe's outputs beside it, into
expected/peft-<case>/. src/roundtrip.test.js loads those adapters and must give the same outputs.

    .venv-oracle/bin/python examples/peft-roundtrip/python/train_in_peft.py
"""

import json
import math
import os
import random

import peft
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup

from common import EXPECTED, SETTINGS, load_base, load_data, pad_batch, probe


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    data = load_data()
    t = SETTINGS["training"]
    # the base model's own probe: @lora/models must read fortune-llama as transformers does
    (EXPECTED / "base").mkdir(parents=True, exist_ok=True)
    save_file(probe(load_base(), data["probe"]), EXPECTED / "base" / "probe.safetensors")
    for name, case in SETTINGS["cases"].items():
        torch.manual_seed(t["seed"])
        base = load_base()
        config = LoraConfig(
            r=case["r"],
            lora_alpha=case["lora_alpha"],
            target_modules=case["target_modules"],
            use_dora=case["use_dora"],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, config)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=0.0)
        sched = get_cosine_schedule_with_warmup(opt, t["warmup_steps"], t["steps"])
        rng = random.Random(t["seed"])
        losses: list[float] = []
        while len(losses) < t["steps"]:
            order = list(range(len(data["train"])))
            rng.shuffle(order)
            for i in range(0, len(order), t["batch_size"]):
                if len(losses) == t["steps"]:
                    break
                x, labels = pad_batch([data["train"][k] for k in order[i : i + t["batch_size"]]])
                loss = model(input_ids=x, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
                opt.step()
                sched.step()
                opt.zero_grad()
                losses.append(loss.item())
        out = EXPECTED / f"peft-{name}"
        # base_model_name_or_path as the repo sees it, not this machine's absolute path
        model.peft_config["default"].base_model_name_or_path = "examples/fortune-llama/model"
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template: nothing about this adapter
        p = probe(model, data["probe"])
        save_file(p, out / "probe.safetensors", metadata={"peft": peft.__version__, "torch": torch.__version__})
        (out / "train.json").write_text(
            json.dumps({"losses": [round(v, 6) for v in losses], "probe_loss": float(p["loss"])}, indent=1) + "\n"
        )
        size = os.path.getsize(out / "adapter_model.safetensors")
        print(
            f"peft-{name}: {t['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
            f"probe loss {float(p['loss']):.4f} (ppl {math.exp(float(p['loss'])):.2f}); adapter {size:,} bytes -> {out}"
        )


if __name__ == "__main__":
    main()
