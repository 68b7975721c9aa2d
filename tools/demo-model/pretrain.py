#!/usr/bin/env python3
"""Pretrains the demo's base model, fortune-llama, with PyTorch and transformers (GPU or CPU).

    python3 tools/demo-model/pretrain.py --out "$OUT"    # the published recipe: a sweep of 6 runs
    python3 tools/demo-model/pretrain.py --shape h192-l6 --steps 50 --batch-size 8 --out /tmp/x  # smoke
    python3 tools/demo-model/pretrain.py --reference-only    # only __fixtures__/reference.json, again

Needs tools/demo-model/.data/corpus/ (prepare_corpus.py) and the tokenizer in
examples/fortune-llama/model/ (train_tokenizer.py); no network. For each candidate shape in
--shapes (all under the 5 MB bf16 cap) and each step count in --steps it trains a tied-embedding LlamaForCausalLM from a seeded
init with AdamW and a warmup + cosine schedule on 256-token blocks of the packed, per-epoch
shuffled pretraining entries, evaluates the held-out entries every --eval-every steps and keeps
the best step; the run with the lowest held-out loss wins. It writes, under --out (laid out
as examples/fortune-llama/):

  model/config.json, generation_config.json, model.safetensors (bf16), tokenizer.json,
        tokenizer_config.json
  __fixtures__/reference.json   what transformers computes with the shipped (bf16) weights:
                                logits, per-entry losses and greedy continuations, for the JS tests
  TRAINING.md                   data, recipe, every run's figures, hardware and time
  train-log.jsonl               every logged step of every run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PACKAGE = ROOT / "examples" / "fortune-llama"
EOT_ID = 0
SIZE_CAP = 5_000_000  # bytes of model.safetensors


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int

    def params(self, vocab: int) -> int:
        head_dim = self.hidden // self.heads
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        mlp = 3 * self.hidden * self.intermediate
        return vocab * self.hidden + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden


# Candidates of about 2.3-2.4 M parameters (4.6-4.9 MB in bf16): deeper and narrower, or wider.
SHAPES = {
    "h192-l6": Shape(hidden=192, layers=6, intermediate=384, heads=6, kv_heads=2),
    "h192-l5": Shape(hidden=192, layers=5, intermediate=512, heads=6, kv_heads=2),
    "h160-l8": Shape(hidden=160, layers=8, intermediate=416, heads=5, kv_heads=1),
}
# Prompts of the reference continuations (the JS tests compare their greedy output with these).
PROMPTS = ["You will", "A computer", "The best way to", "Q:\tWhat"]


def read_fortune_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [e.strip("\n") for e in text.split("\n%\n") if e.strip()]


def encode(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text as the model sees it: <|endoftext|> (the post-processor adds it) + its tokens."""
    return [e.ids for e in tok.encode_batch(texts)]


def blocks(docs: list[list[int]], ctx: int) -> torch.Tensor:
    """Packs documents into [n, ctx] blocks; the tail is padded with -1 (masked in the loss)."""
    flat = [t for d in docs for t in d] + [EOT_ID]
    n = math.ceil(len(flat) / ctx)
    flat += [-1] * (n * ctx - len(flat))
    return torch.tensor(flat, dtype=torch.long).view(n, ctx)


def nll(model: LlamaForCausalLM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token losses and their count; targets that are padding (-1) are left out."""
    logits = model(input_ids=x.clamp(min=0)).logits.float()
    target = x[:, 1:].reshape(-1)
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.clamp(min=0), reduction="none")
    mask = target >= 0
    return (losses * mask).sum(), mask.sum()


def token_losses(model: LlamaForCausalLM, x: torch.Tensor) -> tuple[float, int]:
    s, c = nll(model, x)
    return float(s), int(c)


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        s, c = token_losses(model, data[i : i + batch])
        total, count = total + s, count + c
    model.train()
    return total / count


@torch.no_grad()
def entry_losses(model: LlamaForCausalLM, docs: list[list[int]]) -> list[tuple[float, int]]:
    """Each document alone, as the demo measures it: <|endoftext|> text <|endoftext|>; (loss sum, targets)."""
    model.eval()
    out = [token_losses(model, torch.tensor([d + [EOT_ID]])) for d in docs]
    model.train()
    return out


def lr_at(step: int, steps: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_config(shape: Shape, vocab: int, ctx: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=ctx,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=EOT_ID,
        initializer_range=0.02,
    )


def train_one(name: str, shape: Shape, steps: int, args, data, log) -> dict:
    device = args.device
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(make_config(shape, data["vocab"], args.ctx)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        **({"fused": True} if device.startswith("cuda") else {}),
    )
    gen = torch.Generator().manual_seed(args.seed)
    train_docs = data["train"]
    heldout = data["heldout"].to(device)
    epoch, order, pos = 0, None, 0
    best = {"loss": float("inf"), "step": 0, "state": None}
    started = time.time()
    ema = None
    tokens_seen = 0
    step = 0
    print(f"[{name}] {n_params:,} parameters, {steps} steps of {args.batch_size}x{args.ctx} tokens", flush=True)
    for step in range(steps):
        if order is None or pos + args.batch_size > len(order):
            # a new epoch: shuffle the entries, pack them, shuffle the blocks
            perm = torch.randperm(len(train_docs), generator=gen).tolist()
            packed = blocks([train_docs[i] for i in perm], args.ctx)
            order = packed[torch.randperm(len(packed), generator=gen)]
            pos, epoch = 0, epoch + 1
        xc = order[pos : pos + args.batch_size]
        x = xc.to(device, non_blocking=True)
        pos += args.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args)
        total, _ = nll(model, x)
        c = int((xc[:, 1:] >= 0).sum())  # counted on the host: no device sync per step
        loss = total / c
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        tokens_seen += c
        last = step + 1 == steps
        if (step + 1) % args.log_every == 0 or last or (step + 1) % args.eval_every == 0:
            value = float(loss.detach())  # one sync per logged step, not per step
            ema = value if ema is None else 0.8 * ema + 0.2 * value
        if (step + 1) % args.eval_every == 0 or last:
            held = evaluate(model, heldout, args.eval_batch)
            elapsed = time.time() - started
            row = {"run": name, "step": step + 1, "epoch": epoch, "train_loss": round(ema, 4),
                   "heldout_loss": round(held, 4), "lr": lr_at(step, steps, args), "grad_norm": round(float(grad_norm), 3),
                   "tokens": tokens_seen, "seconds": round(elapsed, 1)}  # fmt: skip
            log(row)
            print(
                f"[{name}] step {step + 1:5d}/{steps} epoch {epoch:3d} train {ema:.4f} held-out {held:.4f} "
                f"(ppl {math.exp(held):7.2f}) lr {row['lr']:.2e} {tokens_seen / elapsed:9.0f} tok/s {elapsed:6.1f}s",
                flush=True,
            )
            if held < best["loss"]:
                best = {"loss": held, "step": step + 1, "train_loss": ema,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}  # fmt: skip
            if args.max_seconds and elapsed > args.max_seconds:
                print(f"[{name}] stopping at step {step + 1}: --max-seconds {args.max_seconds} reached", flush=True)
                break
    model.load_state_dict(best["state"])
    return {
        "name": name,
        "shape": asdict(shape),
        "steps": steps,
        "params": n_params,
        "best_step": best["step"],
        "heldout_loss": best["loss"],
        "train_loss": best["train_loss"],
        "steps_run": step + 1,
        "seconds": time.time() - started,
        "model": model,
    }


def write_outputs(best: dict, runs: list[dict], args, data, tok_dir: Path, total_seconds: float) -> None:
    out = args.out
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model = best["model"].to("cpu").float()
    fp32_held = evaluate(model, data["heldout"], args.eval_batch)
    model.to(torch.bfloat16).save_pretrained(model_dir)
    model.generation_config.save_pretrained(model_dir)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if (tok_dir / f).resolve() != (model_dir / f).resolve():
            shutil.copy(tok_dir / f, model_dir / f)
    size = (model_dir / "model.safetensors").stat().st_size
    if size >= SIZE_CAP:
        print(f"warning: model.safetensors is {size:,} bytes, over the {SIZE_CAP:,} cap", file=sys.stderr)

    reference = write_reference(model_dir, data, args)
    write_card(best, runs, args, data, size, fp32_held, reference, total_seconds)
    print(f"wrote {model_dir} ({size:,} bytes), {out / '__fixtures__' / 'reference.json'}, {out / 'TRAINING.md'}")


def write_reference(model_dir: Path, data: dict, args: argparse.Namespace) -> dict:
    """Reloads what was written, widened to float32 as @lora/models does, and records what it computes."""
    shipped = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    state = load_file(model_dir / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    held = evaluate(shipped, data["heldout"], args.eval_batch)
    lora_held = entry_losses(shipped, data["lora_heldout"])
    lora_train = entry_losses(shipped, data["lora_train"])
    tok = data["tokenizer"]
    with torch.no_grad():
        ids = encode(tok, [PROMPTS[0]])[0]
        logits = shipped(input_ids=torch.tensor([ids])).logits[0]
        continuations = []
        for p in PROMPTS:
            pid = encode(tok, [p])[0]
            g = shipped.generate(torch.tensor([pid]), max_new_tokens=24, do_sample=False, eos_token_id=EOT_ID,
                                 pad_token_id=EOT_ID)[0].tolist()  # fmt: skip
            continuations.append({"prompt": p, "ids": g, "text": tok.decode(g)})
    token_mean = lambda rows: sum(s for s, _ in rows) / sum(c for _, c in rows)  # noqa: E731
    reference = {
        "note": "transformers (float32, from the bf16 model.safetensors); written by tools/demo-model/pretrain.py",
        "prompt": PROMPTS[0],
        "prompt_ids": ids,
        "logits_last": [round(v, 6) for v in logits[-1].tolist()],
        "logits_first_8": [[round(v, 6) for v in row[:8]] for row in logits.tolist()],
        "heldout_loss": held,
        # per token over every entry of the split, each entry alone (what the demo's perplexity is)
        "lora_heldout_loss": token_mean(lora_held),
        "lora_train_loss": token_mean(lora_train),
        "lora_heldout_entry_losses": [s / c for s, c in lora_held],
        "greedy": continuations,
    }
    (args.out / "__fixtures__").mkdir(parents=True, exist_ok=True)
    (args.out / "__fixtures__" / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def write_card(best, runs, args, data, size, fp32_held, ref, total_seconds) -> None:
    device = args.device
    hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    manifest = data["manifest"]
    cats = manifest["categories"]
    pre = {k: v for k, v in cats.items() if k != manifest["lora_category"]}
    s = best["shape"]
    lines = [
        "# fortune-llama: how it was trained",
        "",
        "Written by `tools/demo-model/pretrain.py`; the numbers below are that run's own.",
        "",
        "## Model",
        "",
        f"`LlamaForCausalLM` (transformers {transformers.__version__}), tied embeddings, "
        f"{best['params']:,} parameters: hidden {s['hidden']}, {s['layers']} layers, intermediate {s['intermediate']}, "
        f"{s['heads']} attention heads of {s['hidden'] // s['heads']}, {s['kv_heads']} key/value heads (GQA), "
        f"vocabulary {data['vocab']}, context {args.ctx}, RoPE theta 10000, RMSNorm eps 1e-5. "
        f"Stored as bf16: `model.safetensors` is {size:,} bytes.",
        "",
        "## Data",
        "",
        "Debian 12 packages `fortunes` and `fortunes-min` " + manifest["source"]["fortunes"]["version"]
        + " (SHA-256 " + ", ".join(f"{k} `{v['sha256'][:16]}…`" for k, v in manifest["source"].items()) + "), "
        f"rebuilt by `tools/demo-model/prepare_corpus.py`: {len(pre)} categories, "
        f"{sum(v['train'] for v in pre.values()):,} training and {sum(v['heldout'] for v in pre.values()):,} "
        f"held-out entries ({manifest['heldout_share']:.0%} of each category, seed {manifest['seed']}), "
        f"{data['train_tokens']:,} training tokens. The `{manifest['lora_category']}` category (fortune-cookie "
        "predictions) is left out of pretraining and of the tokenizer: it is the LoRA demo's task. "
        "Licence and the categories left out: [LICENCE.md](../../tools/demo-model/LICENCE.md).",
        "",
        "| category | train | held-out | bytes |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {v['train']} | {v['heldout']} | {v['bytes']:,} |" for k, v in cats.items()],
        "",
        "## Recipe",
        "",
        f"AdamW (betas 0.9/0.95, weight decay {args.weight_decay} on matrices, none on norms), peak learning rate "
        f"{args.lr}, {args.warmup} warmup steps then cosine to {args.min_lr_ratio}× over each run's steps "
        f"({', '.join(str(n) for n in args.steps)}), "
        f"batches of {args.batch_size}×{args.ctx} tokens (entries shuffled and packed each epoch, "
        f"`<|endoftext|>` before each), gradient norm clipped at {args.max_grad_norm}, float32, seed {args.seed}. "
        f"Held-out loss every {args.eval_every} steps; each run keeps its best step, and the shape with the lowest "
        "held-out loss is shipped (so the held-out set also chose the checkpoint).",
        "",
        "| run | parameters | best step | train loss | held-out loss | held-out ppl | steps run | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {r['name']}{' (shipped)' if r is best else ''} | {r['params']:,} | {r['best_step']} | "
            f"{r['train_loss']:.4f} | {r['heldout_loss']:.4f} | {math.exp(r['heldout_loss']):.2f} | {r['steps_run']} | "
            f"{r['seconds']:.0f} |"
            for r in runs
        ],
        "",
        "## The shipped weights",
        "",
        f"Held-out loss {fp32_held:.4f} in float32 before rounding, {ref['heldout_loss']:.4f} "
        f"(perplexity {math.exp(ref['heldout_loss']):.2f}) from the bf16 file. On the LoRA task's entries, "
        f"one at a time as the demo measures them (per token): held-out loss {ref['lora_heldout_loss']:.4f} "
        f"(perplexity {math.exp(ref['lora_heldout_loss']):.2f}), training entries {ref['lora_train_loss']:.4f}.",
        "",
        "Greedy continuations (transformers):",
        "",
        *[f"- `{c['prompt']!r}` → `{c['text']!r}`" for c in ref["greedy"]],
        "",
        "## Hardware and time",
        "",
        f"{hw}; torch {torch.__version__}, Python {platform.python_version()}; {total_seconds:.0f} s in all.",
        "",
    ]
    (args.out / "TRAINING.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=HERE / ".data" / "corpus")
    ap.add_argument("--tokenizer", type=Path, default=PACKAGE / "model")
    ap.add_argument("--lora-data", type=Path, default=PACKAGE / "data")
    ap.add_argument("--out", type=Path, default=PACKAGE)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--shape", dest="shapes", help="one shape (same as --shapes)")
    ap.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[800, 1600],
                    help="comma-separated: every shape is trained for each step count")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=20, help="steps between train-loss readings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-seconds", type=float, default=0, help="stop a run early after this long (0: never)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--heldout-blocks", type=int, default=0, help="evaluate only this many held-out blocks (smoke tests)")
    ap.add_argument("--reference-only", action="store_true", help="no training: rewrite __fixtures__/reference.json from --out/model")
    args = ap.parse_args()
    t0 = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # plain float32, as the JS side computes
    torch.backends.cudnn.allow_tf32 = False

    tok = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    if tok.token_to_id("<|endoftext|>") != EOT_ID:
        raise SystemExit(f"{args.tokenizer}/tokenizer.json: <|endoftext|> must be id {EOT_ID}")
    rows = lambda name: [json.loads(line)["text"] for line in open(args.corpus / name, encoding="utf-8")]  # noqa: E731
    train_docs = encode(tok, rows("pretrain.train.jsonl"))
    data = {
        "tokenizer": tok,
        "vocab": tok.get_vocab_size(),
        "train": train_docs,
        "train_tokens": sum(len(d) for d in train_docs),
        "heldout": blocks(encode(tok, rows("pretrain.heldout.jsonl")), args.ctx)[: args.heldout_blocks or None],
        "lora_train": encode(tok, read_fortune_file(args.lora_data / "fortunes.train.txt")),
        "lora_heldout": encode(tok, read_fortune_file(args.lora_data / "fortunes.heldout.txt")),
        "manifest": json.loads((args.corpus / "manifest.json").read_text()),
    }
    print(
        f"device {args.device}; {data['train_tokens']:,} training tokens in {len(train_docs):,} entries, "
        f"{int((data['heldout'] >= 0).sum()):,} held-out tokens; vocabulary {data['vocab']}",
        flush=True,
    )
    if args.reference_only:
        write_reference(args.out / "model", data, args)
        print(f"wrote {args.out / '__fixtures__' / 'reference.json'}")
        return
    names = [n for n in args.shapes.split(",") if n]
    for n in names:
        if n not in SHAPES:
            raise SystemExit(f"unknown shape '{n}'; choose from {', '.join(SHAPES)}")
        b = 2 * SHAPES[n].params(data["vocab"])
        if b >= SIZE_CAP:
            raise SystemExit(f"shape '{n}' needs {b:,} bytes in bf16, over the {SIZE_CAP:,} cap")

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train-log.jsonl", "w")

    def log(row: dict) -> None:
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()

    runs = [train_one(f"{n}/{k}", SHAPES[n], k, args, data, log) for n in names for k in args.steps]
    best = min(runs, key=lambda r: r["heldout_loss"])
    for r in runs:  # only the winner's weights are kept
        if r is not best:
            del r["model"]
    print(f"best: {best['name']} (held-out {best['heldout_loss']:.4f} at step {best['best_step']})", flush=True)
    write_outputs(best, runs, args, data, args.tokenizer, time.time() - t0)
    log_file.close()


if __name__ == "__main__":
    main()
