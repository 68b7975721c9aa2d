"""adapter_config.json files that PEFT 0.21 writes with each method's sub-config (LoftQ, EVA, LoRA-GA,
Arrow), for the typed method configs of @lora/core: read, written back, compared field by field.

Only configs: PeftConfig.save_pretrained writes adapter_config.json without a model.

    .venv-oracle/bin/python tools/oracle/method_config_fixtures.py   # -> packages/core/__fixtures__/method-configs/
"""
import os
import shutil
import warnings

from peft import ArrowConfig, EvaConfig, LoftQConfig, LoraConfig, LoraGAConfig

from oracle_common import CORE_FIXTURES

OUT = os.path.join(CORE_FIXTURES, "method-configs")


def write(name, config):
    directory = os.path.join(OUT, name)
    shutil.rmtree(directory, ignore_errors=True)
    config.save_pretrained(directory)
    print("wrote", os.path.join(directory, "adapter_config.json"))


def main():
    warnings.simplefilter("ignore")
    common = dict(r=4, lora_alpha=8, target_modules=["q_proj"])
    write("loftq", LoraConfig(**common, init_lora_weights="loftq", loftq_config=LoftQConfig(loftq_bits=2, loftq_iter=3)))
    write(
        "eva",
        LoraConfig(
            **common,
            init_lora_weights="eva",
            eva_config=EvaConfig(rho=1.5, tau=0.9, use_label_mask=False, label_mask_value=-1, whiten=True, adjust_scaling_factors=False),
        ),
    )
    # init 'eva' without eva_config: PEFT warns and writes its default EvaConfig
    write("eva-default", LoraConfig(**common, init_lora_weights="eva"))
    write(
        "lora-ga",
        LoraConfig(**common, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig(direction="A2rBr", scale="weight_svd", stable_gamma=8)),
    )
    arrow = ArrowConfig(top_k=2, router_temperature=0.5, use_gks=True, rng_seed=7)
    # set by create_arrow_model (init=False fields), written with the config
    arrow.task_adapter_names = ["task_0", "task_1", "task_2"]
    arrow.gks_adapter_names = ["gks_0"]
    write("arrow", LoraConfig(**common, arrow_config=arrow))


if __name__ == "__main__":
    main()
