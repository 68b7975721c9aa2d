"""Checks that Python reads a Hub cache @lora wrote: for each repo under LORA_HUB_CACHE (a cache dir our
fromPretrained / loadTokenizer filled, e.g. from `startFakeHub` in a test), huggingface_hub's
try_to_load_from_cache and hf_hub_download(local_files_only=True) find every snapshot file, and
transformers loads the model and tokenizer from the repo id with HF_HUB_OFFLINE=1. Exit status 1 on a miss.
Run: LORA_HUB_CACHE=/tmp/cache .venv-oracle/bin/python tools/oracle/check_hub_cache.py"""
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
cache = os.environ["LORA_HUB_CACHE"]
os.environ["HF_HUB_CACHE"] = cache

from huggingface_hub import hf_hub_download, try_to_load_from_cache  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

bad = 0
for folder in sorted(os.listdir(cache)):
    if not folder.startswith("models--"):
        continue
    repo = "/".join(folder.split("--")[1:])
    commit = open(os.path.join(cache, folder, "refs", "main")).read()
    snap = os.path.join(cache, folder, "snapshots", commit)
    for name in sorted(os.listdir(snap)):
        found = try_to_load_from_cache(repo, name, cache_dir=cache)
        path = hf_hub_download(repo, name, cache_dir=cache, local_files_only=True)
        ok = found == path == os.path.join(snap, name) and os.path.isfile(path)
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {repo} {name}")
    names = os.listdir(snap)
    if "config.json" in names:
        model = AutoModelForCausalLM.from_pretrained(repo)
        print(f"ok  {repo}: transformers loaded {type(model).__name__} offline, {sum(p.numel() for p in model.parameters())} parameters")
    if "tokenizer.json" in names:
        tok = AutoTokenizer.from_pretrained(repo)
        print(f"ok  {repo}: tokenizer {type(tok).__name__}, 'LoRA trains' -> {tok('LoRA trains').input_ids}")
sys.exit(1 if bad else 0)
