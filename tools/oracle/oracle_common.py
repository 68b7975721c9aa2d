"""What the PEFT fixture scripts share: where fixtures go, and saving an adapter without its model card."""
import os
import shutil

CORE_FIXTURES = os.environ.get("ORACLE_OUT") or os.path.join(os.path.dirname(__file__), "..", "..", "packages", "core", "__fixtures__")


def save_adapter(model, directory, **kwargs):
    """save_pretrained into a clean directory, without the model cards (README.md) PEFT writes."""
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, **kwargs)
    for root, _, files in os.walk(directory):
        for f in files:
            if f.endswith(".md"):
                os.remove(os.path.join(root, f))
