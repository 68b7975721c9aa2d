"""@lora -> PEFT: loads each adapter that `npm start` (src/main.js) trained and saved in JS into
PEFT 0.21 (PeftModel.from_pretrained on fortune-llama, float32, CPU), runs the probe, compares it with
the probe JS computed with the same adapter, and records PEFT's outputs as
expected/python-on-js-<case>.safetensors (src/roundtrip.test.js checks JS against them).

    npm start -w @lora-examples/peft-roundtrip        # -> examples/peft-roundtrip/out/js-<case>/
    .venv-oracle/bin/python examples/peft-roundtrip/python/check_from_js.py [OUT_DIR]
"""

import hashlib
import json
import sys
from pathlib import Path

import peft
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from common import EXPECTED, HERE, SETTINGS, load_base, load_data, max_relative_error, probe

TOLERANCE = 1e-5


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out"
    data = load_data()
    report, failed = {}, False
    for name in SETTINGS["cases"]:
        adapter = out / f"js-{name}"
        model = PeftModel.from_pretrained(load_base(), adapter)
        config = json.loads((adapter / "adapter_config.json").read_text())
        theirs = probe(model, data["probe"])
        ours = load_file(adapter / "probe.safetensors")  # what JS computed with this adapter
        errors = {k: max_relative_error(ours[k], theirs[k]) for k in theirs}
        ok = all(e <= TOLERANCE for e in errors.values())
        failed |= not ok
        digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
        save_file(
            theirs,
            EXPECTED / f"python-on-js-{name}.safetensors",
            metadata={"peft": peft.__version__, "torch": torch.__version__, "adapter_sha256": digest},
        )
        report[name] = {
            "use_dora": config.get("use_dora", False),
            "adapter_sha256": digest,
            "peft_loss": float(theirs["loss"]),
            "js_loss": float(ours["loss"]),
            "max_relative_error_js_vs_peft": errors,
        }
        print(
            f"js-{name}: PEFT loaded it ({'DoRA' if config.get('use_dora') else 'LoRA'} r={config['r']}); "
            f"probe loss PEFT {float(theirs['loss']):.6f}, JS {float(ours['loss']):.6f}; max relative error "
            + ", ".join(f"{k} {e:.1e}" for k, e in errors.items())
            + ("" if ok else f"  ABOVE {TOLERANCE}")
        )
    (EXPECTED / "python-on-js.json").write_text(
        json.dumps({"peft": peft.__version__, "torch": torch.__version__, "cases": report}, indent=1) + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
