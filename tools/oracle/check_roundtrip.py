"""Loads adapters made by @lora/core into PEFT 0.21 and compares PEFT's outputs with ours.

The adapters come from packages/core/src/peft-roundtrip.test.ts:
    LORA_ROUNDTRIP_DIR=/tmp/rt npx vitest run src/peft-roundtrip.test.ts   (in packages/core)
    python tools/oracle/check_roundtrip.py /tmp/rt
index.json at the top lists the cases: the model class (found by name in the net modules below), its
constructor's keyword arguments, the forward pass's inputs, the adapters and save_embedding_layers. Each
case directory holds base.safetensors (the base model's weights before wrapping), the adapters in PEFT's
layout (`default` at the root, the others in sub-folders named after them) and io.safetensors (the
inputs by name, our output y.<adapter> per adapter).

Each adapter is loaded by PeftModel.from_pretrained on a fresh base model and, where a case has several,
also beside the others in one PeftModel (load_adapter, then set_adapter). One line per adapter: the max
relative difference max |theirs - ours| / max |theirs| of each, and whether the file holds the keys and
shapes PEFT itself would save for the loaded adapter (get_peft_model_state_dict): `ok`, `FAIL` (an
output differs by 1e-5 or more) or `KEYS` (the outputs agree but the file's keys or shapes are not
PEFT's). Exit status 0 when every line is `ok`.

With `--write-expected FILE`, PEFT's outputs (`<case>.y.<adapter>`, the adapter alone) are also saved to FILE:
committed as packages/core/__fixtures__/roundtrip-peft.safetensors, they let the test compare with PEFT on CI."""
import importlib
import inspect
import json
import os
import sys
import warnings

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
NET_MODULES = ["peft_fixtures_net", "fifo_fixtures_net", "combine_net", "tokens_net"]
TOLERANCE = 1e-5


def model_classes():
    """Every torch module class the net modules define, by name (a name defined twice maps to both)."""
    found = {}
    for module_name in NET_MODULES:
        for name, cls in vars(importlib.import_module(module_name)).items():
            if inspect.isclass(cls) and issubclass(cls, torch.nn.Module) and cls.__module__ == module_name:
                found.setdefault(name, []).append(cls)
    return found


def base_model(case, cls, directory):
    """The case's model with the base weights @lora saved; a tied weight may be stored under one of its names."""
    model = cls(**case.get("model_args", {}))
    state = load_file(os.path.join(directory, "base.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if id(params.get(k)) not in loaded]
    if unexpected or untied:
        raise SystemExit(f"{case['name']}: base.safetensors does not fit {case['model']}: missing {untied}, unexpected {unexpected}")
    return model.eval()


def relative_difference(theirs, ours):
    return ((theirs - ours).abs().max() / theirs.abs().max()).item()


def key_differences(model, adapter_dir, save_embedding_layers):
    """How the adapter file's keys and shapes differ from what PEFT saves for the adapter it loaded from it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, save_embedding_layers=save_embedding_layers).items()}
    ours = {k: tuple(v.shape) for k, v in load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).items()}
    problems = []
    if sorted(set(ours) - set(theirs)):
        problems.append(f"only in ours {sorted(set(ours) - set(theirs))}")
    if sorted(set(theirs) - set(ours)):
        problems.append(f"only in PEFT's {sorted(set(theirs) - set(ours))}")
    problems += [f"{k} is {ours[k]} in ours, {theirs[k]} in PEFT's" for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
    return problems


def main(root, expected_file=None):
    classes = model_classes()
    expected = {}
    failed = checked = 0
    for case in json.load(open(os.path.join(root, "index.json"))):
        d = os.path.join(root, case["name"])
        matches = classes.get(case["model"], [])
        if len(matches) != 1:
            where = "several" if matches else "none"
            raise SystemExit(f"{case['name']}: model class {case['model']!r} is defined in {where} of {', '.join(NET_MODULES)}")
        cls = matches[0]
        io = load_file(os.path.join(d, "io.safetensors"))
        inputs = [io[n] if torch.is_floating_point(io[n]) else io[n].long() for n in case["inputs"]]
        names = case["adapters"]
        save_embedding_layers = case.get("save_embedding_layers", "auto")

        def adapter_dir(name, d=d):
            return d if name == "default" else os.path.join(d, name)

        together = None
        if len(names) > 1:
            together = PeftModel.from_pretrained(base_model(case, cls, d), adapter_dir(names[0]), adapter_name=names[0])
            for name in names[1:]:
                together.load_adapter(adapter_dir(name), adapter_name=name)
            together.eval()
        for name in names:
            ours = io[f"y.{name}"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PEFT's expected warnings (fan_in_fan_out corrected, grouped convolutions)
                alone = PeftModel.from_pretrained(base_model(case, cls, d), adapter_dir(name)).eval()
            with torch.no_grad():
                theirs = alone(*inputs)
                expected[f"{case['name']}.y.{name}"] = theirs.contiguous()
                errors = [("alone", relative_difference(theirs, ours))]
                if together is not None:
                    together.set_adapter(name)
                    errors.append(("beside the others", relative_difference(together(*inputs), ours)))
            keys = key_differences(alone, adapter_dir(name), save_embedding_layers)
            agree = all(e < TOLERANCE for _, e in errors)
            status = "ok  " if agree and not keys else "KEYS" if agree else "FAIL"
            failed += status != "ok  "
            checked += 1
            said = ", ".join(f"{e:.2e} ({how})" for how, e in errors)
            print(f"{status} {case['name']}/{name} [{case['model']}]: max relative difference {said}; "
                  + ("keys and shapes as PEFT saves them" if not keys else "keys differ from PEFT's save: " + "; ".join(keys)))
    print(f"{failed} of {checked} adapters failed" if failed else f"all {checked} adapters made by @lora load in PEFT and give @lora's outputs")
    if expected_file:
        save_file(expected, expected_file)
        print(f"PEFT's outputs written to {expected_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    out = args[args.index("--write-expected") + 1] if "--write-expected" in args else None
    sys.exit(main(args[0], out))
