"""A Hugging Face Hub cache exactly as Python users have one, written by huggingface_hub itself.

A small Hub-shaped HTTP server runs here on 127.0.0.1 (no network is needed or used) and
`hf_hub_download`, the function transformers' and PEFT's `from_pretrained` call, downloads from it into
packages/tensor/__fixtures__/hf-cache/. The repos:
- lora-test/tiny-llama-bf16, lora-test/tiny-llama-f16: one tiny random Llama saved by transformers in
  bfloat16 and in float16 (config.json, model.safetensors, generation_config.json), with the tokenizer of
  packages/models/__fixtures__/tokenizer;
- lora-test/peft-qv: the PEFT adapter packages/core/__fixtures__/peft-qv, as a Hub repo.
Also written:
- packages/tensor/__fixtures__/hf-cache/manifest.json: each repo's commit and each file's sha256;
- packages/models/__fixtures__/half-dtypes.expected.safetensors: for each dtype, every weight as float32
  (torch's upcast of the 16-bit values) and the logits of that float32 model on `input_ids`.
Run: .venv-oracle/bin/python tools/oracle/hub_fixtures.py
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import tempfile
import threading

os.environ["HF_HUB_DISABLE_XET"] = "1"  # plain HTTP downloads, as from a mirror
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from huggingface_hub import hf_hub_download  # noqa: E402
import huggingface_hub  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = os.path.join(HERE, "..", "..", "packages")
OUT = os.environ.get("ORACLE_OUT")
CACHE = os.path.join(OUT or os.path.join(PACKAGES, "tensor", "__fixtures__"), "hf-cache")
MODELS_FIX = OUT or os.path.join(PACKAGES, "models", "__fixtures__")

# --- the repos' files -------------------------------------------------------------------------------
cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.5,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
torch.manual_seed(1234)
base = LlamaForCausalLM(cfg).eval()
ids = torch.randint(3, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(5))
expected = {"input_ids": ids.to(torch.int32)}
repos = {}
work = tempfile.mkdtemp()
tok_dir = os.path.join(MODELS_FIX, "tokenizer") if not OUT else os.path.join(PACKAGES, "models", "__fixtures__", "tokenizer")
for tag, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
    d = os.path.join(work, tag)
    base.to(dtype).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), d)
    # what transformers computes in float32 from this checkpoint: the 16-bit values upcast, then the forward
    f32 = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        expected[f"{tag}.logits"] = f32(input_ids=ids).logits.float()
    for k, v in f32.state_dict().items():
        expected[f"{tag}.{k}"] = v.detach().clone()
    repos[f"lora-test/tiny-llama-{tag}"] = {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}
adapter_dir = os.path.join(PACKAGES, "core", "__fixtures__", "peft-qv")
repos["lora-test/peft-qv"] = {f: open(os.path.join(adapter_dir, f), "rb").read() for f in sorted(os.listdir(adapter_dir))}
with open(os.path.join(work, "bf16", "model.safetensors"), "rb") as fh:
    assert b'"BF16"' in fh.read(4096), "the bf16 checkpoint is not stored as BF16"

# --- a Hub-shaped server: what hf_hub_download needs --------------------------------------------------
commits = {repo: hashlib.sha1(f"commit of {repo}".encode()).hexdigest() for repo in repos}


def git_oid(b):
    return hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()


class Hub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _file(self):
        m = re.match(r"^/(?:cdn/([0-9a-f]{64})|(.+?/.+?)/resolve/([^/]+)/(.+))$", self.path)
        if not m:
            return None, None, None
        if m.group(1):
            for repo, files in repos.items():
                for name, b in files.items():
                    if hashlib.sha256(b).hexdigest() == m.group(1):
                        return repo, name, "cdn"
            return None, None, None
        repo, rev, name = m.group(2), m.group(3), m.group(4)
        if repo not in repos or rev not in ("main", commits[repo]) or name not in repos[repo]:
            return None, None, None
        return repo, name, "resolve"

    def _serve(self, body):
        repo, name, kind = self._file()
        if repo is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        b = repos[repo][name]
        lfs = name.endswith(".safetensors") or len(b) > 1000
        if kind == "resolve" and lfs:
            self.send_response(302)
            self.send_header("X-Repo-Commit", commits[repo])
            self.send_header("ETag", f'"{git_oid(b)}"')
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(b).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(b)))
            # the CDN is another host, as the Hub's is: huggingface_hub takes the metadata from this redirect
            self.send_header("Location", f"http://127.0.0.2:{cdn.server_port}/cdn/{hashlib.sha256(b).hexdigest()}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        r = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if r:
            start = int(r.group(1))
        self.send_response(206 if r else 200)
        if kind == "resolve":
            self.send_header("X-Repo-Commit", commits[repo])
        self.send_header("ETag", f'"{git_oid(b) if kind == "resolve" else hashlib.sha256(b).hexdigest()}"')
        self.send_header("Content-Length", str(len(b) - start))
        if r:
            self.send_header("Content-Range", f"bytes {start}-{len(b) - 1}/{len(b)}")
        self.end_headers()
        if body:
            self.wfile.write(b[start:])

    def do_HEAD(self):
        self._serve(False)

    def do_GET(self):
        self._serve(True)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
cdn = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Hub)
for s in (server, cdn):
    threading.Thread(target=s.serve_forever, daemon=True).start()
endpoint = f"http://127.0.0.1:{server.server_port}"

shutil.rmtree(CACHE, ignore_errors=True)
manifest = {"huggingface_hub": huggingface_hub.__version__, "transformers": transformers.__version__, "torch": torch.__version__, "repos": {}}
for repo, files in repos.items():
    for name in files:
        path = hf_hub_download(repo, name, cache_dir=CACHE, endpoint=endpoint)
        assert os.path.islink(path), path
    manifest["repos"][repo] = {"commit": commits[repo], "files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
server.shutdown()
cdn.shutdown()
shutil.rmtree(os.path.join(CACHE, ".locks"), ignore_errors=True)  # empty lock files: not part of what is read
with open(os.path.join(CACHE, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(MODELS_FIX, "half-dtypes.expected.safetensors"))
shutil.rmtree(work)
for root, dirs, fs in sorted(os.walk(CACHE)):
    for f in sorted(fs):
        p = os.path.join(root, f)
        print(os.path.relpath(p, CACHE), "->", os.readlink(p) if os.path.islink(p) else f"{os.path.getsize(p)} bytes")
