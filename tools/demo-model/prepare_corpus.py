#!/usr/bin/env python3
"""The demo model's corpus, rebuilt from Debian's `fortunes` packages (Python standard library only).

    python3 tools/demo-model/prepare_corpus.py            # apt-get download, or deb.debian.org
    python3 tools/demo-model/prepare_corpus.py --debs DIR  # .deb files you already have

1. Gets `fortunes` and `fortunes-min` version 1:1.99.1-7.3 (Debian 12 "bookworm") with
   `apt-get download`, or from deb.debian.org's pool where apt is missing, and checks their SHA-256.
2. Reads the fortune files out of each .deb's data.tar.xz (no dpkg needed): one category per file,
   entries separated by lines holding only `%`.
3. Cleans each entry (terminal overstrike `x\\b` removed, trailing spaces and blank edge lines dropped),
   removes duplicates across files, keeps the categories in PRETRAIN and LORA_CATEGORY (see
   LICENCE.md beside this script for why the others are left out).
4. Splits, seeded: every pretraining category gives HELDOUT_SHARE of its entries to the held-out
   set; the LoRA category is never seen in pretraining (nor by the tokenizer) and is split into
   LORA_HELDOUT held-out entries and the rest for fine-tuning.

Writes (git-ignored, carried to the GPU machine): tools/demo-model/.data/corpus/
  pretrain.train.jsonl, pretrain.heldout.jsonl  one {"category", "text"} per line
  manifest.json                                 package versions, hashes, per-category counts
and (committed; small, the demo's task): examples/fortune-llama/data/
  fortunes.train.txt, fortunes.heldout.txt      in fortune's own format (entries between `%` lines)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DATA = HERE / ".data"
DEMO_DATA = ROOT / "examples" / "fortune-llama" / "data"

VERSION = "1:1.99.1-7.3"
PACKAGES = {
    # name: (file name in Debian's pool, SHA-256 of the .deb)
    "fortunes": ("fortunes_1.99.1-7.3_all.deb", "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"),
    "fortunes-min": (
        "fortunes-min_1.99.1-7.3_all.deb",
        "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
    ),
}
POOL = "https://deb.debian.org/debian/pool/main/f/fortune-mod/"

# Kept for pretraining (see LICENCE.md for the categories left out and why).
PRETRAIN = [
    "computers", "cookie", "definitions", "disclaimer", "drugs", "education", "food", "goedel", "kids",
    "law", "linux", "linuxcookie", "literature", "love", "medicine", "miscellaneous", "news", "paradoxum",
    "people", "perl", "pets", "platitudes", "politics", "riddles", "science", "sports", "tao", "wisdom",
    "work",
]  # fmt: skip
# The demo's fine-tuning task: fortune-cookie predictions, a style the base model never saw.
LORA_CATEGORY = "fortunes"
HELDOUT_SHARE = 0.05
LORA_HELDOUT = 60
SEED = 19


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_debs(dest: Path) -> dict[str, Path]:
    """The two .deb files in `dest`, downloaded when absent, each checked against its SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (file_name, digest) in PACKAGES.items():
        path = dest / file_name
        if not path.exists():
            if shutil.which("apt-get"):
                with tempfile.TemporaryDirectory() as tmp:
                    subprocess.run(["apt-get", "download", f"{name}={VERSION}"], cwd=tmp, check=True)
                    (got,) = Path(tmp).glob("*.deb")
                    shutil.move(str(got), path)
            else:
                print(f"apt-get not found; downloading {POOL}{file_name}", file=sys.stderr)
                with urllib.request.urlopen(POOL + file_name) as r:
                    path.write_bytes(r.read())
        if sha256(path) != digest:
            raise SystemExit(f"{path}: SHA-256 {sha256(path)} is not {digest} (Debian's {name} {VERSION})")
        out[name] = path
    return out


def deb_members(path: Path) -> dict[str, bytes]:
    """The members of a .deb (an `ar` archive): name -> bytes."""
    blob = path.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SystemExit(f"{path}: not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return members


def fortune_files(deb: Path) -> dict[str, bytes]:
    """Category name -> raw text of each file under usr/share/games/fortunes/ in the .deb."""
    members = deb_members(deb)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name != "data.tar.xz":
        raise SystemExit(f"{deb}: expected data.tar.xz, found {data_name}")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(members[data_name]))) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and parts[-2:-1] == ("fortunes",) and "." not in parts[-1]:
                files[parts[-1]] = tar.extractfile(m).read()
    return files


OVERSTRIKE = re.compile(r"[^\n]\x08")


def clean(entry: str) -> str:
    while OVERSTRIKE.search(entry):  # `_\bx` (underline) and `x\bx` (bold) both leave `x`
        entry = OVERSTRIKE.sub("", entry)
    lines = [line.rstrip() for line in entry.split("\n")]
    return "\n".join(lines).strip("\n")


def entries(raw: bytes) -> list[str]:
    text = raw.decode("utf-8")
    out = []
    for chunk in re.split(r"^%\n", text + ("" if text.endswith("\n") else "\n"), flags=re.M):
        e = clean(chunk)
        if e.strip():
            out.append(e)
    return out


def write_fortune_file(path: Path, items: list[str]) -> None:
    path.write_text("".join(f"{e}\n%\n" for e in items), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", type=Path, default=DATA / "debs", help="where the .deb files are (or go)")
    ap.add_argument("--out", type=Path, default=DATA / "corpus")
    ap.add_argument("--demo-out", type=Path, default=DEMO_DATA)
    args = ap.parse_args()

    debs = fetch_debs(args.debs)
    files: dict[str, bytes] = {}
    for deb in debs.values():
        files.update(fortune_files(deb))
    missing = [c for c in [*PRETRAIN, LORA_CATEGORY] if c not in files]
    if missing:
        raise SystemExit(f"categories missing from the packages: {missing}")

    # The LoRA category first, so that an entry it shares with another file stays out of pretraining.
    seen: set[str] = set()
    by_category: dict[str, list[str]] = {}
    for cat in [LORA_CATEGORY, *sorted(PRETRAIN)]:
        kept = []
        for e in entries(files[cat]):
            key = " ".join(e.split()).lower()
            if key not in seen:
                seen.add(key)
                kept.append(e)
        by_category[cat] = kept

    manifest = {
        "source": {n: {"version": VERSION, "file": f, "sha256": d} for n, (f, d) in PACKAGES.items()},
        "seed": SEED,
        "heldout_share": HELDOUT_SHARE,
        "lora_category": LORA_CATEGORY,
        "categories": {},
    }
    train, heldout = [], []
    for cat in sorted(PRETRAIN):
        items = by_category[cat][:]
        random.Random(f"{SEED}:{cat}").shuffle(items)
        n_held = max(2, round(HELDOUT_SHARE * len(items)))
        heldout += [{"category": cat, "text": e} for e in items[:n_held]]
        train += [{"category": cat, "text": e} for e in items[n_held:]]
        manifest["categories"][cat] = {
            "train": len(items) - n_held,
            "heldout": n_held,
            "bytes": sum(len(e.encode()) + 1 for e in items),
        }
    lora = by_category[LORA_CATEGORY][:]
    random.Random(f"{SEED}:{LORA_CATEGORY}").shuffle(lora)
    manifest["categories"][LORA_CATEGORY] = {
        "train": len(lora) - LORA_HELDOUT,
        "heldout": LORA_HELDOUT,
        "bytes": sum(len(e.encode()) + 1 for e in lora),
        "use": "LoRA demo only (not in pretraining or the tokenizer)",
    }

    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in [("pretrain.train.jsonl", train), ("pretrain.heldout.jsonl", heldout)]:
        with open(args.out / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    args.demo_out.mkdir(parents=True, exist_ok=True)
    write_fortune_file(args.demo_out / f"{LORA_CATEGORY}.heldout.txt", lora[:LORA_HELDOUT])
    write_fortune_file(args.demo_out / f"{LORA_CATEGORY}.train.txt", lora[LORA_HELDOUT:])
    for p in [args.out / "pretrain.train.jsonl", args.out / "pretrain.heldout.jsonl",
              args.demo_out / f"{LORA_CATEGORY}.train.txt", args.demo_out / f"{LORA_CATEGORY}.heldout.txt"]:  # fmt: skip
        manifest.setdefault("outputs", {})[p.name] = sha256(p)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(len(r["text"].encode()) + 1 for r in train + heldout)
    print(
        f"pretraining: {len(train)} train + {len(heldout)} held-out entries from {len(PRETRAIN)} categories "
        f"({size / 1e6:.2f} MB) -> {args.out}"
    )
    print(f"LoRA task '{LORA_CATEGORY}': {len(lora) - LORA_HELDOUT} train + {LORA_HELDOUT} held-out -> {args.demo_out}")


if __name__ == "__main__":
    main()
