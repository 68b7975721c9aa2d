"""What both Python scripts share with src/roundtrip.js: roundtrip.json, the data and the probe."""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

HERE = Path(__file__).resolve().parent.parent  # examples/peft-roundtrip
MODEL = HERE.parent / "fortune-llama" / "model"
DATA = HERE.parent / "fortune-llama" / "data"
EXPECTED = HERE / "expected"
SETTINGS = json.loads((HERE / "roundtrip.json").read_text())


def read_fortunes(path: Path) -> list[str]:
    """Entries of a fortune file, as parseFortunes in @lora-examples/fortune-llama reads them."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    entries = []
    for e in "\n".join("\x00" if line == "%" else line for line in text.split("\n")).split("\x00"):
        e = e.strip("\n")
        if e.strip():
            entries.append(e)
    return entries


def load_data() -> dict[str, list[list[int]]]:
    """Each entry as the model sees it: <|endoftext|> (the post-processor adds it) + tokens + <|endoftext|>."""
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))

    def read(name: str, max_tokens: int) -> list[list[int]]:
        return [(e.ids + [0])[:max_tokens] for e in tok.encode_batch(read_fortunes(DATA / name))]

    return {
        "train": read("fortunes.train.txt", SETTINGS["training"]["max_tokens"]),
        "probe": read("fortunes.heldout.txt", SETTINGS["probe"]["max_tokens"])[: SETTINGS["probe"]["heldout_entries"]],
    }


def load_base() -> torch.nn.Module:
    """fortune-llama (bf16 on disk) in float32, as @lora/models loads it."""
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)


def pad_batch(docs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(d) for d in docs)
    x = torch.tensor([d + [0] * (n - len(d)) for d in docs])
    labels = torch.tensor([d + [-100] * (n - len(d)) for d in docs])
    return x, labels


@torch.no_grad()
def probe(model: torch.nn.Module, docs: list[list[int]]) -> dict[str, torch.Tensor]:
    """The loss, each target's log-probability ([n, len-1], 0 at padding), the logits at each last real position."""
    model.eval()
    x, labels = pad_batch(docs)
    out = model(input_ids=x, labels=labels)
    logits = out.logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, x[:, 1:, None])[..., 0]
    real = (labels[:, 1:] != -100).float()
    last = torch.stack([logits[i, len(d) - 1] for i, d in enumerate(docs)])
    return {"loss": out.loss.float().reshape(()), "logprobs": (logp * real).contiguous(), "last": last.contiguous()}


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|, as maxRelativeError in @lora/tensor."""
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-30))
