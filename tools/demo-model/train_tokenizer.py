#!/usr/bin/env python3
"""The demo model's tokenizer: byte-level BPE trained on the pretraining split with Hugging Face `tokenizers`.

    .venv-oracle/bin/python tools/demo-model/train_tokenizer.py [--vocab-size 2048]

Reads tools/demo-model/.data/corpus/pretrain.train.jsonl (from prepare_corpus.py): the LoRA task's
category and every held-out entry stay unseen. One special token, `<|endoftext|>` (id 0), is the
beginning, end and padding token; the post-processor puts it before each text, as the model saw
entries in pretraining. Writes tokenizer.json, tokenizer_config.json, and tokenizer-cases.json (ids
that Python gives for a few hard strings, which the JS loader's test compares against) into
examples/fortune-llama/ (and its __fixtures__/).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODEL_DIR = ROOT / "examples" / "fortune-llama" / "model"
FIXTURES = ROOT / "examples" / "fortune-llama" / "__fixtures__"
EOT = "<|endoftext|>"
CONTEXT = 256

CASES = [
    "You will be married within a year.",
    "Afternoon, n.:\n\tThat part of the day we spend worrying about how we wasted\nthe morning.",
    "\t\t-- Mark Twain, \"Pudd'nhead Wilson's Calendar\"",
    "Q:\tWhat's yellow and equivalent to the axiom of choice?\nA:\tZorn's lemon.",
    "  indented   spaces,\ttabs\t\tand\n\n\nnewlines  ",
    "caf\u00e9 na\u00efve \u00fcber \u2014 \u201cquotes\u201d \u2192 \U0001f600 \u6f22\u5b57",
    f"two{EOT}texts",
    "",
]


def train(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B:1", special_tokens=[(EOT, tok.token_to_id(EOT))]
    )
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=HERE / ".data" / "corpus")
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--fixtures", type=Path, default=FIXTURES)
    ap.add_argument("--vocab-size", type=int, default=2048)
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.corpus / "pretrain.train.jsonl", encoding="utf-8")]
    texts = [r["text"] for r in rows]
    tok = train(texts, args.vocab_size)
    assert tok.token_to_id(EOT) == 0, "the special token must be id 0"
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": None,
        "model_max_length": CONTEXT,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {"0": {"content": EOT, "special": True, "lstrip": False, "rstrip": False,
                                       "normalized": False, "single_word": False}},  # fmt: skip
    }
    (args.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    held = [json.loads(line)["text"] for line in open(args.corpus / "pretrain.heldout.jsonl", encoding="utf-8")]
    n_bytes = sum(len(t.encode()) for t in held)
    n_tokens = sum(len(e.ids) - 1 for e in tok.encode_batch(held))
    cases = [
        {
            "text": t,
            "ids": tok.encode(t).ids,
            "ids_no_special": tok.encode(t, add_special_tokens=False).ids,
            "decoded": tok.decode(tok.encode(t).ids),
        }
        for t in CASES
    ]
    args.fixtures.mkdir(parents=True, exist_ok=True)
    (args.fixtures / "tokenizer-cases.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    print(
        f"vocab {tok.get_vocab_size()}: held-out pretraining text {n_bytes / n_tokens:.2f} bytes/token "
        f"-> {args.out}/tokenizer.json"
    )


if __name__ == "__main__":
    main()
