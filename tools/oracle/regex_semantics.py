"""PEFT 0.21's answers for the regular expressions a LoraConfig holds, asked of PEFT's own functions.

For each case (a config's target_modules / exclude_modules / modules_to_save / layers_to_transform /
layers_pattern, or a rank_pattern's keys) and each module path, records what
`check_target_module_exists` and `get_pattern_key` return. Patterns that Python's `re` cannot compile
are recorded as errors. @lora/core runs the same cases on RE2 and must agree.

    .venv-oracle/bin/python tools/oracle/regex_semantics.py   # -> packages/core/__fixtures__/regex-semantics.json
"""

import json
import pathlib
import re
from types import SimpleNamespace

from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key

OUT = pathlib.Path(__file__).resolve().parents[2] / "packages" / "core" / "__fixtures__" / "regex-semantics.json"

KEYS = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.12.mlp.down_proj",
    "model.layers.3.mlp.experts.0.up_proj",
    "layers.2.out",
    "lm_head",
    "model.embed_tokens",
    "encoder.block.1.layer.0.SelfAttention.q",
    "h.4.attn.c_attn",
    "transformer.h.10.mlp.c_fc",
    "q_proj",
    "model.norm",
]

TARGET_CASES = [
    {"target_modules": r".*\.(q|v)_proj"},
    {"target_modules": r"q_proj"},
    {"target_modules": r"model\.layers\.1\d?\..*"},
    {"target_modules": r".*(attn|mlp)\..*"},
    {"target_modules": r"(?i).*Q_PROJ"},
    {"target_modules": r".*\.(?P<name>q|v)_proj"},
    {"target_modules": r"[a-z_.0-9]*proj"},
    {"target_modules": r".*\.\d+\..*"},
    {"target_modules": r"lm_head|model\.embed_tokens"},
    {"target_modules": r".*proj\Z"},
    {"target_modules": r"(a|.*q_proj)"},
    {"target_modules": ["q_proj", "v_proj"], "exclude_modules": r".*layers\.1\..*"},
    {"target_modules": ["q_proj", "v_proj", "down_proj"], "exclude_modules": ["v_proj"]},
    {"target_modules": ["q_proj", "up_proj", "down_proj"], "modules_to_save": ["mlp"]},
    {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["self_attn"]},
    {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["layers.1"]},
    {"target_modules": ["q_proj", "v_proj"], "modules_to_save": ["q_pr.j"]},
    {"target_modules": ["q_proj", "v_proj", "down_proj", "up_proj"], "layers_to_transform": [0, 3, 12]},
    {"target_modules": ["q_proj", "v_proj", "down_proj"], "layers_to_transform": 1, "layers_pattern": "layers"},
    {"target_modules": ["q_proj", "v_proj", "up_proj"], "layers_to_transform": [0, 3], "layers_pattern": ["h", "layers"]},
    {"target_modules": ["c_attn", "c_fc"], "layers_to_transform": [4, 10], "layers_pattern": "h"},
    {"target_modules": ["up_proj"], "layers_to_transform": [0], "layers_pattern": "experts"},
    {"target_modules": ["q_proj", "c_attn"], "layers_to_transform": [0, 4], "layers_pattern": "(layers|h)"},
]

PATTERN_CASES = [
    ["mlp", "q_proj"],
    ["layers.1.*", "q_proj"],
    [r"layers\.\d+\.self_attn\.q_proj"],
    ["v_proj", r".*\.v_proj"],
    ["proj"],
    [".*proj"],
    ["out", "layers.2.out"],
    ["q_proj|v_proj"],
    ["(q|v)_proj"],
    ["model.layers.0.self_attn.q_proj"],
    ["lm_head", "embed_tokens"],
    [r"c_\w+"],
]


def config(case):
    fields = {
        "target_modules": None,
        "exclude_modules": None,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "target_parameters": None,
    }
    fields.update(case)
    return SimpleNamespace(**fields)


def target_answer(case, key):
    got = check_target_module_exists(config(case), key)
    if type(got).__name__ == "_ExcludedModule":
        return "excluded"
    return "targeted" if got else "unmatched"


def main():
    targets = []
    for case in TARGET_CASES:
        targets.append({"config": case, "answers": {k: target_answer(case, k) for k in KEYS}})
    patterns = []
    for keys in PATTERN_CASES:
        # get_pattern_key returns the key itself when no pattern matches; recorded as null
        answers = {}
        for k in KEYS:
            got = get_pattern_key(keys, k)
            answers[k] = None if got == k and got not in keys else got
        patterns.append({"patterns": keys, "answers": answers})
    # what Python's re refuses to compile at all, for the error cases
    invalid = []
    for p in ["(", "[a-", "*q", "a{2,1}"]:
        try:
            re.compile(p)
        except re.error as e:
            invalid.append({"pattern": p, "python_error": str(e)})
    OUT.write_text(json.dumps({"peft": "0.21.0", "keys": KEYS, "targets": targets, "patterns": patterns, "invalid": invalid}, indent=1) + "\n")
    print(f"wrote {OUT} ({len(targets)} target cases, {len(patterns)} pattern cases, {len(KEYS)} keys)")


if __name__ == "__main__":
    main()
